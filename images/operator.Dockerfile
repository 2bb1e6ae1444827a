# syntax=docker/dockerfile:1
# Operator image: kopf and the Kubernetes client only (no torch, no runtime dependencies).
# The published image builds on the official Python image:
#   docker buildx build -f images/operator.Dockerfile -t orpheus-tts-operator:dev .
# images/build.sh builds this same file with buildah on a local Debian base (--build-arg BASE=localhost/...).
ARG BASE=python:3.12.12-slim-bookworm
FROM ${BASE}

# The pod contract: UID 10001, read-only root filesystem, writable /tmp only.
ENV HOME=/home/orpheus \
    XDG_CACHE_HOME=/home/orpheus/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY images/pip.sh requirements/operator.txt /opt/orpheus-build/
RUN --mount=type=secret,id=pip-ca --mount=type=cache,id=orpheus-pip,target=/var/cache/orpheus-pip \
    sh /opt/orpheus-build/pip.sh install-requirements /opt/orpheus-build/operator.txt

# Only the operator's package: with no runtime/ in the source tree, the wheel holds orpheus_operator alone.
COPY pyproject.toml README.md /opt/orpheus-build/src/
COPY operator /opt/orpheus-build/src/operator
RUN --mount=type=secret,id=pip-ca --mount=type=cache,id=orpheus-pip,target=/var/cache/orpheus-pip \
    sh /opt/orpheus-build/pip.sh install --no-deps /opt/orpheus-build/src \
    && rm -rf /opt/orpheus-build

RUN useradd --create-home --uid 10001 --user-group orpheus
USER 10001:10001
WORKDIR /home/orpheus
EXPOSE 8080
ENTRYPOINT ["orpheus-operator"]

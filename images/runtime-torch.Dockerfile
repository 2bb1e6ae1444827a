# syntax=docker/dockerfile:1
# Runtime image, PyTorch backend: GPU when one is there, CPU otherwise (demos, the skaffold `cpu` profile, the e2e
# suite). The published image builds on the official Python image:
#   docker buildx build -f images/runtime-torch.Dockerfile -t orpheus-tts-torch:dev .
# images/build.sh builds this same file with buildah on a local Debian base (--build-arg BASE=localhost/...): no
# registry is reachable in CI, and the tests run the image it builds.
# torch comes from requirements/runtime.txt (PyPI's Linux wheel is the CUDA build and brings its CUDA libraries as
# nvidia-* wheels), so this image runs exactly the torch version CI tests.
# Everything below the FROM line is, step for step, what runtime-trtllm.Dockerfile does on NVIDIA's base
# (tests/chart/test_images.py holds them equal): the Python layers tested on CPU are built as the ones we ship.
ARG BASE=python:3.12.12-slim-bookworm
FROM ${BASE}

# The pod contract (docs/deploy.md): UID 10001, read-only root filesystem, writable /tmp, /home/orpheus/.cache and
# /engines only. Every cache a library might write goes under /home/orpheus/.cache.
ENV HOME=/home/orpheus \
    XDG_CACHE_HOME=/home/orpheus/.cache \
    HF_HOME=/home/orpheus/.cache/huggingface \
    TRITON_CACHE_DIR=/home/orpheus/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/home/orpheus/.cache/torchinductor \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The pinned runtime requirements the base lacks (all of them on a plain Python base; on NVIDIA's base its own
# torch, numpy, ... stay). Wheels come through a build cache mount: a changed pin does not download torch again.
COPY images/pip.sh images/missing_requirements.py requirements/runtime.txt /opt/orpheus-build/
RUN --mount=type=secret,id=pip-ca --mount=type=cache,id=orpheus-pip,target=/var/cache/orpheus-pip \
    python3 /opt/orpheus-build/missing_requirements.py /opt/orpheus-build/runtime.txt >/opt/orpheus-build/missing.txt \
    && sh /opt/orpheus-build/pip.sh install-requirements /opt/orpheus-build/missing.txt

RUN useradd --create-home --uid 10001 --user-group orpheus \
    && install -d -o 10001 -g 10001 /engines /home/orpheus/.cache
# Editable install owned by the serving user: `skaffold dev -p cpu` syncs changed Python sources into /app.
COPY --chown=10001:10001 pyproject.toml README.md /app/
COPY --chown=10001:10001 runtime /app/runtime
COPY --chown=10001:10001 operator /app/operator
RUN --mount=type=secret,id=pip-ca --mount=type=cache,id=orpheus-pip,target=/var/cache/orpheus-pip \
    sh /opt/orpheus-build/pip.sh install --no-deps -e /app \
    && rm -rf /opt/orpheus-build
USER 10001:10001
WORKDIR /home/orpheus
EXPOSE 8000
ENTRYPOINT ["orpheus-tts"]
CMD ["serve"]

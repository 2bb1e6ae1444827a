# Operator image: kopf and the Kubernetes client only (no torch, no runtime dependencies).
# Build from the repository root:  docker build -f images/operator.Dockerfile -t orpheus-tts-operator:dev .
FROM python:3.12.12-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY requirements/operator.txt /tmp/operator.txt
RUN python -m pip install -r /tmp/operator.txt && rm /tmp/operator.txt

COPY pyproject.toml README.md /src/
COPY runtime /src/runtime
COPY operator /src/operator
RUN python -m pip install --no-deps /src && rm -rf /src

RUN useradd --uid 10001 --user-group --no-create-home orpheus
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["orpheus-operator"]

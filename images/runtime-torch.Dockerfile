# Runtime image, PyTorch backend: GPU when one is there, CPU otherwise (demos, the skaffold `cpu` profile).
# Build from the repository root:  docker build -f images/runtime-torch.Dockerfile -t orpheus-tts-torch:dev .
# torch comes from requirements/runtime.txt (PyPI's Linux wheel is the CUDA build and brings its CUDA libraries as
# nvidia-* wheels), so this image runs exactly the torch version CI tests.
FROM python:3.12.12-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/orpheus/.cache/huggingface

COPY requirements/runtime.txt /tmp/runtime.txt
RUN python -m pip install -r /tmp/runtime.txt && rm /tmp/runtime.txt

RUN useradd --create-home --uid 10001 --user-group orpheus && mkdir /engines && chown orpheus:orpheus /engines
# Editable install owned by the serving user: `skaffold dev` syncs changed Python sources into /app.
COPY --chown=10001:10001 pyproject.toml README.md /app/
COPY --chown=10001:10001 runtime /app/runtime
COPY --chown=10001:10001 operator /app/operator
RUN python -m pip install --no-deps -e /app
USER 10001:10001
WORKDIR /home/orpheus
EXPOSE 8000
ENTRYPOINT ["orpheus-tts"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# Runtime image, TensorRT-LLM backend (GPU): `orpheus-tts serve` and the engine-build Job (`orpheus-tts build-engine`).
# Build from the repository root:
#   docker buildx build -f images/runtime-trtllm.Dockerfile -t orpheus-tts:dev .
# NVIDIA's base cannot be pulled in CI. Everything below the TLLM_WORKER_USE_SINGLE_PROCESS line is, step for step,
# runtime-torch.Dockerfile (tests/chart/test_images.py holds them equal), whose image CI builds and runs on CPU: the
# Python layers we test are built as the ones we ship. The requirements filter keeps the base's torch, numpy, ...
# (TensorRT-LLM is validated against them); everything else installs at the project's pins.
FROM nvcr.io/nvidia/tensorrt-llm/release:1.2.1

# One GPU per pod: run TensorRT-LLM's worker in-process instead of through MPI.
# TensorRT's libraries (libnvinfer.so.10): NVIDIA's image puts them on the loader path only in a shell start-up
# file ($ENV, docker/common/install_tensorrt.sh), and neither our ENTRYPOINT nor the operator's command starts a
# shell. `orpheus-tts doctor` checks it (runtime/orpheus_tts/build/doctor.py TENSORRT_LIB_DIR). [issue 14, item 4]
ENV TLLM_WORKER_USE_SINGLE_PROCESS=1 \
    LD_LIBRARY_PATH=/usr/local/tensorrt/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}

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

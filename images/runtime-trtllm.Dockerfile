# Runtime image, TensorRT-LLM backend (GPU): `orpheus-tts serve` and the engine-build Job (`orpheus-tts build-engine`).
# Build from the repository root:  docker build -f images/runtime-trtllm.Dockerfile -t orpheus-tts:dev .
FROM nvcr.io/nvidia/tensorrt-llm/release:1.2.1

# One GPU per pod: run TensorRT-LLM's worker in-process instead of through MPI.
ENV TLLM_WORKER_USE_SINGLE_PROCESS=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/orpheus/.cache/huggingface
# TensorRT's libraries (libnvinfer.so.10): NVIDIA's image puts them on the loader path only in a shell start-up
# file ($ENV, docker/common/install_tensorrt.sh), and neither our ENTRYPOINT nor the operator's command starts a
# shell. `orpheus-tts doctor` checks it (runtime/orpheus_tts/doctor.py TENSORRT_LIB_DIR). [issue 14, item 4]
ENV LD_LIBRARY_PATH=/usr/local/tensorrt/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}

# Runtime requirements, except what the base image already ships (torch, numpy, ...): TensorRT-LLM is validated
# against the image's own versions, so those stay; everything else installs at the project's pins.
COPY requirements/runtime.txt /tmp/runtime.txt
COPY images/missing_requirements.py /tmp/missing_requirements.py
RUN python3 /tmp/missing_requirements.py /tmp/runtime.txt > /tmp/missing.txt \
    && cat /tmp/missing.txt \
    && python3 -m pip install -r /tmp/missing.txt \
    && rm /tmp/runtime.txt /tmp/missing.txt /tmp/missing_requirements.py

RUN useradd --create-home --uid 10001 --user-group orpheus && mkdir /engines && chown orpheus:orpheus /engines
# Editable install owned by the serving user: `skaffold dev` syncs changed Python sources into /app.
COPY --chown=10001:10001 pyproject.toml README.md /app/
COPY --chown=10001:10001 runtime /app/runtime
COPY --chown=10001:10001 operator /app/operator
RUN python3 -m pip install --no-deps -e /app
USER 10001:10001
WORKDIR /home/orpheus
EXPOSE 8000
ENTRYPOINT ["orpheus-tts"]
CMD ["serve"]

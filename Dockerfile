# darkroom on a CUDA host:
#   docker build -t darkroom . && docker run --gpus all -p 8000:8000 -v darkroom-data:/app/data darkroom
# (podman: the same; `buildah bud --format docker` keeps the HEALTHCHECK, which OCI images drop.)
#
# Two stages. The first installs torch, darkroom (without its test extras), the pinned ComfyUI with its
# requirements, and builds the tiny demo models. The second carries only those results onto the slim
# base, owned by root and run by an unprivileged user: no compilers, make or test dependencies.
# The data volume (/app/data) holds the job store, outputs and the model files (`darkroom models fetch`
# inside the container); a named volume starts with the tiny models the image brings.
FROM python:3.11-slim-bookworm AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The ComfyUI source archive is read from (or downloaded into) $XDG_CACHE_HOME/darkroom.
ENV XDG_CACHE_HOME=/cache DARKROOM_DATA_DIR=/app/data DARKROOM_COMFYUI_DIR=/app/comfyui
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY server ./server
# Dependencies first, so that code edits don't reinstall torch.
RUN make .venv/.deps-stamp EXTRAS= && rm -rf /root/.cache/pip
COPY . .
RUN DARKROOM_COMFYUI_DIR= .venv/bin/darkroom comfyui install \
    && mv data/comfyui/ComfyUI-* /app/comfyui \
    && rm -rf data/comfyui data/comfyui-requirements.txt \
    && .venv/bin/darkroom models make-tiny \
    && rm -rf /root/.cache/pip \
    && find /app -name __pycache__ -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/darkroom darkroom
WORKDIR /app
COPY --from=build /app /app
RUN chown -R darkroom:darkroom /app/data
ENV PATH=/app/.venv/bin:$PATH \
    DARKROOM_HOST=0.0.0.0 \
    DARKROOM_DATA_DIR=/app/data \
    DARKROOM_COMFYUI_DIR=/app/comfyui \
    PYTHONDONTWRITEBYTECODE=1
USER darkroom
VOLUME /app/data
EXPOSE 8000
# /ready: 200 once every ComfyUI worker answers (no curl in the image: Python asks).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
# SIGTERM: darkroom stops taking requests, lets the running ones finish, then stops its workers.
STOPSIGNAL SIGTERM
CMD ["darkroom", "serve"]

# darkroom on a CUDA host: `docker build -t darkroom . && docker run --gpus all -p 8000:8000 -v darkroom-data:/app/data darkroom`
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends make git curl ffmpeg libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt Makefile ./
COPY server ./server
# Dependencies first so code edits don't reinstall torch.
RUN make .venv/.deps-stamp
COPY . .
# ComfyUI (pinned) and the tiny demo models are baked in; real weights live in the data volume.
RUN make setup

ENV DARKROOM_HOST=0.0.0.0 \
    DARKROOM_DATA_DIR=/app/data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
CMD [".venv/bin/darkroom", "serve"]

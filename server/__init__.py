"""darkroom's facade: fal's HTTP API in front of ComfyUI workers.

Layers, top to bottom. A module imports only from layers below its own; packages sharing a line do not
import each other. ``tests/unit/test_layers.py`` checks this (import-linter contracts in
pyproject.toml), and that no package's modules import each other in a circle.

    cli                      the ``darkroom`` command
    app                      create_app: builds every part, the error boundary, the routes
    api                      HTTP and WebSocket routes, nothing else
    queue                    the durable job queue, its store, order and webhooks
    generation               one request on a worker: the generator, live events, progress fan-out
    workflows | media        mappings and request schemas | request files, LoRAs, uploads, outputs
    engine | security        ComfyUI install, model files, workers, client | keys, tokens, address policy
    settings | errors        the one settings object | typed errors with their HTTP status
"""

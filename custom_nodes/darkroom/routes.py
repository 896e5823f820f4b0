"""The pack's routes on ComfyUI's own server: ``GET /darkroom/loaded``, the models this worker holds
(``ops.loaded``), for darkroom's dashboard; ``GET /darkroom/packs``, the node ids each installed third-
party pack declares (``ops.packs``: darkroom compares them with /object_info to find overrides); and the
``darkroom.evaluations`` WebSocket message, each
sampling run's model evaluations (``ops.evaluations``), and the ``darkroom.loss`` message, each training
step's loss (``ops.train_progress``), sent to the prompt's client."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .ops import evaluations, train_progress
from .ops.loaded import loaded_models
from .ops.packs import declared_nodes


def register() -> None:
    """Add the routes to ComfyUI's PromptServer (before it starts serving, as custom nodes do)."""
    from server import PromptServer  # ComfyUI's server module: in ComfyUI's process, not the facade

    @PromptServer.instance.routes.get("/darkroom/loaded")
    async def loaded(request: web.Request) -> web.Response:
        return web.json_response({"models": loaded_models()})

    @PromptServer.instance.routes.get("/darkroom/packs")
    async def packs(request: web.Request) -> web.Response:
        return web.json_response({"packs": await declared_nodes()})

    def sender(key: str) -> Any:
        def send(message: dict[str, Any]) -> None:
            PromptServer.instance.send_sync(key, message, PromptServer.instance.client_id)

        return send

    evaluations.REPORTERS.append(sender(evaluations.KEY))
    train_progress.REPORTERS.append(sender(train_progress.KEY))

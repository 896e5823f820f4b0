"""The pack's routes on ComfyUI's own server: ``GET /darkroom/loaded``, the models this worker holds
(``ops.loaded``), for darkroom's dashboard."""

from __future__ import annotations

from aiohttp import web

from .ops.loaded import loaded_models


def register() -> None:
    """Add the routes to ComfyUI's PromptServer (before it starts serving, as custom nodes do)."""
    from server import PromptServer  # ComfyUI's server module: in ComfyUI's process, not the facade

    @PromptServer.instance.routes.get("/darkroom/loaded")
    async def loaded(request: web.Request) -> web.Response:
        return web.json_response({"models": loaded_models()})

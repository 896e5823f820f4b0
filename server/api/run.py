"""fal's sync API: POST /run/{app_id}[/{subpath}] validates, generates on a worker and answers the output."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from server.api import sse
from server.api.request import base_url, read_json
from server.api.state import ENDPOINTS, GENERATOR, HUB, REQUEST_ID
from server.errors import DarkroomError
from server.generation.live import run_live
from server.workflows.mapping import Endpoint
from server.workflows.validation import find_endpoint, validate_input


def routes() -> list[web.RouteDef]:
    """The sync run routes (the stream first: ``/run/{path}`` would match it too)."""
    return [web.post("/run/{path:.+}/stream", run_stream), web.post("/run/{path:.+}", run)]


async def read_input(request: web.Request, endpoint: Endpoint) -> Any:
    """The validated request body, or a 422 that says what is wrong."""
    return validate_input(endpoint, await read_json(request))


async def run(request: web.Request) -> web.Response:
    """Sync run: the response is the model output itself (fal sends no envelope)."""
    endpoint = find_endpoint(request.app[ENDPOINTS], request.match_info["path"])
    request_id = request[REQUEST_ID] = str(uuid.uuid4())
    parsed = await read_input(request, endpoint)
    generator = request.app[GENERATOR]
    output = await run_live(
        generator, request.app[HUB], endpoint, parsed, request_id=request_id,
        base_url=base_url(request, generator.settings), previews_per_s=generator.settings.previews_per_s,
    )  # fmt: skip
    return web.json_response(output)


async def run_stream(request: web.Request) -> web.StreamResponse:
    """Sync run as SSE: live events (started, progress, preview, log), then the output as the last
    event; an error is one event ``{"detail", "error_type"}``. A client that leaves cancels the run."""
    request_id = request[REQUEST_ID] = str(uuid.uuid4())
    try:
        endpoint = find_endpoint(request.app[ENDPOINTS], request.match_info["path"])
        parsed = await read_input(request, endpoint)
    except DarkroomError as e:
        return await sse.error_stream(request, e)
    generator, hub = request.app[GENERATOR], request.app[HUB]
    subscription = hub.subscribe(request_id)
    task = asyncio.create_task(
        run_live(
            generator, hub, endpoint, parsed, request_id=request_id,
            base_url=base_url(request, generator.settings), previews_per_s=generator.settings.previews_per_s,
        )
    )  # fmt: skip
    response = await sse.open_stream(request)
    try:
        async for event in subscription:
            if event["type"] == "completed":
                await sse.send(response, event["result"])
            elif event["type"] == "failed":
                await sse.send(response, {"detail": event["detail"], "error_type": event["error_type"]})
            else:
                await sse.send(response, event)
    except ConnectionResetError:
        pass  # the client left; the run is cancelled below
    finally:
        subscription.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return response

"""fal's sync API: POST /run/{app_id}[/{subpath}] validates, generates on a worker and answers the output."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from . import openapi, sse
from .errors import DarkroomError, NotFoundError, RequestValidationError
from .files import OutputStore, file_route
from .generate import Generator
from .keys import REQUEST_ID
from .live import run_live
from .loras import LoraCache
from .mapping import Endpoint, load_endpoints
from .models import load_manifest
from .progress import HUB
from .request_schema import UNION_TAGS
from .settings import PROJECT_ROOT, Settings
from .supervisor import Supervisor

ENDPOINTS = web.AppKey("endpoints", dict[str, Endpoint])
GENERATOR = web.AppKey("generator", Generator)
WORKFLOWS_DIR = PROJECT_ROOT / "workflows"


def setup(app: web.Application, settings: Settings, supervisor: Supervisor) -> None:
    """Load the mappings (failing at start-up if one is wrong) and register the routes."""
    manifest = load_manifest()
    store = OutputStore(settings.outputs_path)
    app[ENDPOINTS] = load_endpoints(WORKFLOWS_DIR, manifest)
    app[GENERATOR] = Generator(settings, supervisor, manifest, store, LoraCache(settings))
    app.router.add_routes(
        [
            web.post("/run/{path:.+}/stream", run_stream),  # before /run/{path}, which would match too
            web.post("/run/{path:.+}", run),
            file_route(store),
            *openapi.routes(app[ENDPOINTS], app[GENERATOR].choices, supervisor),
        ]
    )


def find_endpoint(endpoints: dict[str, Endpoint], path: str) -> Endpoint:
    """The endpoint whose app id is the longest prefix of path (fal app ids may carry a subpath)."""
    path = path.strip("/")
    for app_id in sorted(endpoints, key=len, reverse=True):
        if path == app_id or path.startswith(app_id + "/"):
            return endpoints[app_id]
    raise NotFoundError(f"No app {path!r} on this server; available: {', '.join(sorted(endpoints))}")


def validation_error(error: ValidationError) -> RequestValidationError:
    """A 422 in fal's shape; the image_size union's internal tags are not part of the field path."""
    wrapped = RequestValidationError.from_pydantic(error)
    for entry in wrapped.errors:
        entry["loc"] = [part for part in entry["loc"] if part not in UNION_TAGS]
    return wrapped


async def read_input(request: web.Request, endpoint: Endpoint) -> Any:
    """The validated request body, or a 422 that says what is wrong."""
    return validate_input(endpoint, await read_json(request))


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body ({} when there is none), or a 422 if it is not JSON."""
    try:
        return await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"Body is not valid JSON: {e}", "type": "json_invalid"}]
        ) from e


def validate_input(endpoint: Endpoint, body: Any) -> Any:
    """The endpoint's validated request model for a parsed JSON body, or a 422 in fal's shape."""
    try:
        return endpoint.validate(body)
    except ValidationError as e:
        raise validation_error(e) from e


def base_url(request: web.Request, settings: Settings) -> str:
    return settings.public_url.rstrip("/") if settings.public_url else f"{request.scheme}://{request.host}"


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

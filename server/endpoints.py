"""fal's sync API: POST /run/{app_id}[/{subpath}] validates, generates on a worker and answers the output."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from . import openapi
from .errors import NotFoundError, RequestValidationError
from .files import OutputStore, file_route
from .generate import Generator
from .keys import REQUEST_ID
from .mapping import UNION_TAGS, Endpoint, load_endpoints
from .models import load_manifest
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
    app[GENERATOR] = Generator(settings, supervisor, manifest, store)
    app.router.add_routes(
        [web.post("/run/{path:.+}", run), file_route(store), *openapi.routes(app[ENDPOINTS])]
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
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"Body is not valid JSON: {e}", "type": "json_invalid"}]
        ) from e
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
    output = await generator.run(
        endpoint, parsed, request_id=request_id, base_url=base_url(request, generator.settings)
    )
    return web.json_response(output)

"""What each endpoint takes and returns: ``GET /endpoints`` lists every endpoint with its model files
(present or missing), ``GET /endpoints/{app_id}`` describes one (``server.workflows.describe``: fields,
defaults, bounds, choices incl. the running ComfyUI's samplers and schedulers, the output kind; the LoRA
folder's files for LoRA fields). The
playground builds its forms from these; a key or the browser session may read them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.api.described import operation
from server.api.state import CATALOG, ENDPOINTS, GENERATOR, INVENTORY, SUPERVISOR
from server.api.workflows import endpoint_urls
from server.errors import NotFoundError
from server.workflows.describe import describe, model_names


def routes() -> list[web.RouteDef]:
    # After /endpoints/{app_id}/workflow (server.api.workflows), which would otherwise match here.
    return [web.get("/endpoints", list_endpoints), web.get("/endpoints/{app_id:.+}", show_endpoint)]


@operation(
    summary="Every endpoint with its model files (present or missing)",
    responses={200: "The list"},
    tag="endpoints",
)
async def list_endpoints(request: web.Request) -> web.Response:
    """Every endpoint a client can call (pinned versions of published workflows left out: they are each
    one version of a listed one), with whether its model files are all here."""
    app, listed = request.app, []
    published, rows = set(app[CATALOG].names()), _model_rows(request)  # one look at the files for all
    for app_id, endpoint in sorted(app[ENDPOINTS].items()):
        if endpoint.raw or "@" in app_id:
            continue
        models = [rows[name] for name in model_names(endpoint, app[GENERATOR].manifest)]
        listed.append({
            "app_id": app_id, "output": endpoint.output.kind, "published": app_id in published,
            "models": models, "ready": all(m["present"] for m in models),
        })  # fmt: skip
    return web.json_response({"endpoints": listed})


@operation(
    summary="One endpoint's fields as a form needs them",
    responses={200: "Fields, output kind, model files, URLs", 404: "Unknown endpoint"},
    tag="endpoints",
)
async def show_endpoint(request: web.Request) -> web.Response:
    app_id = request.match_info["app_id"]
    endpoint = request.app[ENDPOINTS].get(app_id)
    if endpoint is None or endpoint.raw:
        raise NotFoundError(f"No endpoint {app_id!r}; GET /endpoints lists them")
    client = next((w.client for w in request.app[SUPERVISOR].workers if w.ready), None)
    choices = await request.app[GENERATOR].choices.lists_if_known(client)
    described = describe(endpoint, request.app[GENERATOR].manifest, choices)
    for field in described["fields"]:
        if field["type"] == "loras":  # suggestions for the path; URLs and hf:// work too
            field["files"] = await asyncio.to_thread(request.app[GENERATOR].loras.local_files)
    rows = _model_rows(request)
    models = [rows[name] for name in described["models"]]
    return web.json_response({
        **described, "models": models, "ready": all(m["present"] for m in models),
        "published": app_id.split("@")[0] in request.app[CATALOG].names(),
        "urls": endpoint_urls(request, app_id),
    })  # fmt: skip


def _model_rows(request: web.Request) -> dict[str, dict[str, Any]]:
    """Every manifest file as the dashboard shows it (present, size, sha256 state, fetch), by name."""
    return {row["name"]: row for row in request.app[INVENTORY].describe()}

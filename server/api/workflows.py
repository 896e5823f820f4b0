"""Publishing workflows as endpoints: ``POST /workflows`` ``{name, workflow, prompt}`` (201), ``GET
/workflows`` (with the name pattern, so the editor checks a name as it is typed), ``POST
/workflows/check`` ``{prompt, workflow}`` (the request fields a prompt would serve, or the 422 publishing it
get), ``GET /workflows/{owner}/{name}`` (versions), ``GET .../versions/{n}`` (one version's workflow and
prompt, to reopen it in the editor), ``DELETE /workflows/{owner}/{name}`` (unpublish).
A published endpoint answers on every route a built-in one has, at once.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.api.access import requires
from server.api.described import operation
from server.api.request import base_url, read_model
from server.api.state import CATALOG, ENDPOINTS, GENERATOR, PACKS, SETTINGS, SUPERVISOR
from server.errors import NotFoundError, RequestValidationError, WorkerUnavailableError
from server.security.roles import Role
from server.workflows.catalog import NAME, PIN, RESERVED_OWNERS, Version
from server.workflows.describe import describe
from server.workflows.marked import marked_prompt
from server.workflows.node_packs import record_packs
from server.workflows.published import SYNC_MODE_FIELD, endpoint_from_prompt

# owner/name as the catalog takes it (NAME), the owners the queue routes use left out
NAME_PATTERN = rf"^(?!(?:{'|'.join(sorted(RESERVED_OWNERS))})/){NAME.pattern.removeprefix('^')}"
# Refused although well-formed: a node this server's ComfyUI does not have, a model file it lacks, no
# marked output, a name taken by a built-in endpoint (each problem names its node or the name).
NOT_PUBLISHABLE = "not_publishable"


class PromptNode(BaseModel):
    """One node of an API-format workflow (its other keys, such as _meta, are kept)."""

    model_config = ConfigDict(extra="allow", strict=True)
    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class PublishBody(BaseModel):
    # python-re: NAME_PATTERN looks ahead
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")
    name: str = Field(description="owner/name: the endpoint's app id", pattern=NAME_PATTERN)
    prompt: dict[str, PromptNode] = Field(
        min_length=1, description="The API-format workflow (the editor's graphToPrompt output)"
    )
    workflow: dict[str, Any] | None = Field(default=None, description="The UI-format workflow, to reopen it")


class CheckBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: dict[str, PromptNode] = Field(
        min_length=1, description="The API-format workflow (the editor's graphToPrompt output)"
    )
    workflow: dict[str, Any] | None = Field(
        default=None, description="The UI-format workflow: its nodes name their packs (aux_id, ver)"
    )


def routes() -> list[web.RouteDef]:
    one = "/workflows/{owner}/{name}"
    return [
        web.post("/workflows", publish),
        web.post("/workflows/check", check),
        web.get("/workflows", list_workflows),
        web.get(one, show),
        web.get(one + "/versions/{version:[0-9]+}", show_version),
        web.delete(one, unpublish),
        web.get("/endpoints/{app_id:.+}/workflow", endpoint_workflow),
    ]


def endpoint_urls(request: web.Request, app_id: str) -> dict[str, str]:
    root = base_url(request, request.app[SETTINGS])
    return {"run": f"{root}/run/{app_id}", "queue": f"{root}/queue/{app_id}"}


@operation(
    summary="Publish a workflow as an endpoint (a new version)",
    body=PublishBody,
    responses={
        201: "Published: its version and URLs",
        422: "Not publishable: each problem names its node (and a missing node pack, the command adding it)",
        503: "No worker ready to check the nodes",
    },
    refusals={422: (NOT_PUBLISHABLE,)},
    tag="workflows",
)
@requires(Role.DEVELOPER)
async def publish(request: web.Request) -> web.Response:
    """Check and publish; 201 with the new version and the URLs serving it."""
    body = await read_model(request, PublishBody)
    node_types = await _node_types(request)
    prompt = _pack_checked(request, body.prompt, body.workflow, node_types)
    try:
        version = await request.app[CATALOG].publish(body.name, prompt, body.workflow, node_types)
    except RequestValidationError as e:
        raise RequestValidationError(e.errors, code=NOT_PUBLISHABLE) from e
    return web.json_response(_described(request, version), status=201)


def _pack_checked(
    request: web.Request, nodes: dict[str, PromptNode], workflow: dict[str, Any] | None,
    node_types: dict[str, Any],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The prompt with its pack nodes marked; a 422 naming each missing or failed pack (and the
    `darkroom nodes add` command) before publishing's other checks."""
    prompt = {node_id: node.model_dump() for node_id, node in nodes.items()}
    packs_missing = record_packs(prompt, workflow, node_types, request.app[PACKS].report)
    if packs_missing:
        raise RequestValidationError(packs_missing, code=NOT_PUBLISHABLE)
    return prompt


async def _node_types(request: web.Request) -> dict[str, Any]:
    client = next((w.client for w in request.app[SUPERVISOR].workers if w.ready), None)
    if client is None:
        raise WorkerUnavailableError(
            "No ComfyUI worker is ready to check the workflow's nodes and model files against; "
            "try again once GET /ready answers 200."
        )
    return await client.object_info()


@operation(
    summary="The request fields a workflow would serve if published (nothing is published)",
    body=CheckBody,
    responses={
        200: "Its request fields (defaults, bounds) and output kind",
        422: "Not publishable: each problem names its node (and a missing node pack, the command adding it)",
        503: "No worker ready to check the nodes",
    },
    refusals={422: (NOT_PUBLISHABLE,)},
    tag="workflows",
)
@requires(Role.DEVELOPER)
async def check(request: web.Request) -> web.Response:
    """The checks publishing runs, and the fields the input nodes would expose (the editor's Publish
    dialog lists them before publishing); ``sync_mode``, which every published endpoint gets, left out."""
    body = await read_model(request, CheckBody)
    node_types = await _node_types(request)
    prompt = _pack_checked(request, body.prompt, body.workflow, node_types)
    manifest = request.app[GENERATOR].manifest
    try:
        endpoint = endpoint_from_prompt("check/check", prompt, node_types=node_types, manifest=manifest)
    except RequestValidationError as e:
        raise RequestValidationError(e.errors, code=NOT_PUBLISHABLE) from e
    described = describe(endpoint, manifest, None)
    fields = [f for f in described["fields"] if f["name"] != SYNC_MODE_FIELD]
    return web.json_response({"fields": fields, "output": described["output"]})


def _described(request: web.Request, version: Version) -> dict[str, Any]:
    return {
        "name": version.name,
        **version.describe(),
        "urls": endpoint_urls(request, version.name),
        "pinned_urls": endpoint_urls(request, version.app_id),
    }


@operation(
    summary="Published workflows, each with its latest version, and the pattern a name must match",
    responses={200: "The list"},
    tag="workflows",
)
async def list_workflows(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    listed = []
    for name in catalog.names():
        versions = catalog.versions(name)
        listed.append({**_described(request, versions[-1]), "versions": len(versions)})
    return web.json_response(
        {"workflows": listed, "name_pattern": NAME_PATTERN, "reserved_owners": sorted(RESERVED_OWNERS)}
    )


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


@operation(
    summary="A published workflow's versions",
    responses={200: "Its versions", 404: "Not published"},
    tag="workflows",
)
async def show(request: web.Request) -> web.Response:
    name = _name(request)
    versions = request.app[CATALOG].versions(name)
    return web.json_response(
        {
            "name": name,
            "latest": versions[-1].number,
            "urls": endpoint_urls(request, name),
            "versions": [v.describe() for v in versions],
        }
    )


@operation(
    summary="One version of a published workflow (its prompt and editor workflow)",
    responses={200: "The version", 404: "Unknown version"},
    tag="workflows",
)
async def show_version(request: web.Request) -> web.Response:
    version = request.app[CATALOG].version(_name(request), int(request.match_info["version"]))
    return web.json_response(
        {**_described(request, version), "prompt": version.prompt, "workflow": version.workflow}
    )


@operation(
    summary="Any endpoint as an editor workflow (request fields as input nodes)",
    responses={200: "The prompt", 404: "Unknown endpoint"},
    tag="workflows",
)
async def endpoint_workflow(request: web.Request) -> web.Response:
    """Any endpoint's workflow for the editor: a published one's latest prompt (``name@n``: that
    version's), a built-in one's graph with its request fields as input nodes (open it, change it,
    publish it under a new name)."""
    app_id = request.match_info["app_id"]
    endpoint = request.app[ENDPOINTS].get(app_id)
    if endpoint is None or endpoint.raw:
        listed = ", ".join(sorted(k for k, e in request.app[ENDPOINTS].items() if not e.raw and PIN not in k))
        raise NotFoundError(f"No endpoint {app_id!r}; endpoints: {listed}")
    catalog = request.app[CATALOG]
    name, _, number = app_id.partition(PIN)
    if name not in catalog.names():
        prompt = marked_prompt(endpoint, request.app[GENERATOR].manifest)
        return web.json_response({"app_id": app_id, "name": name, "published": False, "prompt": prompt})
    version = catalog.version(name, int(number)) if number else catalog.versions(name)[-1]
    return web.json_response({
        "app_id": app_id, "name": name, "published": True, "version": version.number,
        "prompt": version.prompt,
    })  # fmt: skip


@operation(
    summary="Unpublish a workflow (every version)",
    responses={200: "The versions removed", 404: "Not published"},
    tag="workflows",
)
@requires(Role.DEVELOPER)
async def unpublish(request: web.Request) -> web.Response:
    removed = await request.app[CATALOG].unpublish(_name(request))
    return web.json_response({"name": _name(request), "unpublished_versions": [v.number for v in removed]})

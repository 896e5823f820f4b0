"""The OpenAPI 3.1 document of every route, built from the routes themselves: each handler's
``@operation`` (``server.api.described``) for what it does, takes and answers, ``server.api.auth`` for
who may call it, and the workflow mappings for each app's input and output. ``/docs`` renders it with
Swagger UI (vendored: ``pages/vendor/swagger-ui``), no CDN."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server.api import auth
from server.api.access import required_role
from server.api.described import Body, Operation, operation, operation_of
from server.api.params import described as params_of
from server.engine.supervisor import Supervisor
from server.errors import ConfigError
from server.security import sessions
from server.workflows.choices import FIELD_TYPES, ComfyChoices
from server.workflows.mapping import Endpoint
from server.workflows.request_schema import DEFAULT

_DOCS_PAGE = (Path(__file__).parent / "pages" / "docs.html").read_text()
# Routes documented once per app (each app's own input and output), not as one templated path.
PER_APP = {("POST", "/run/{path}"), ("POST", "/queue/{path}")}
# On a response: the error types of the refusals no schema can express that it may carry (see
# ``Operation.refusals``); the fuzz drill tolerates a well-formed request refused with one of these only.
REFUSALS = "x-darkroom-refusals"
_SCHEMES: dict[str, dict[str, Any]] = {
    "key": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`Key <key>`"},
    "token": {
        "type": "apiKey",
        "in": "query",
        "name": auth.TOKEN_QUERY,
        "description": "An app token from POST /tokens/",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": sessions.COOKIE,
        "description": "The pages' sign-in (/editor/login)",
    },
    "upload_token": {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /storage/auth/token",
    },
    "capability": {
        "type": "apiKey",
        "in": "query",
        "name": "upload",
        "description": "None: the upload URL itself is the credential",
    },
}


class File(BaseModel):
    url: str = Field(description="Where to download it: a /files/ URL, or a data URI with sync_mode")
    content_type: str
    file_name: str
    file_size: int


class Image(File):
    width: int
    height: int


class VideoFile(File):
    """fal's VideoFile: what the worker wrote (the usage rows count these, not the request's values)."""

    width: int
    height: int
    fps: float = Field(description="Frames per second of the file")
    num_frames: int = Field(description="Frames in the file")
    duration: float = Field(description="Seconds: num_frames / fps")


class Timings(BaseModel):
    """fal's timings, a record of numbers; darkroom adds the sampler's model calls."""

    inference: float = Field(description="Seconds on the worker")
    model_evaluations: int | None = Field(
        default=None,
        description="Sampler model calls that evaluated the diffusion model, counted on the worker with a "
        "forward hook; absent when no sampling run was counted (the worker answered from its cache of "
        "the same graph, or a model darkroom's loaders did not load)",
    )
    model_evaluations_reused: int | None = Field(
        default=None,
        description="Sampler model calls the step cache answered instead of the model (acceleration); "
        "absent with model_evaluations",
    )


class ImageOutput(BaseModel):
    images: list[Image]
    seed: int
    timings: Timings
    prompt: str
    has_nsfw_concepts: list[bool | None] = Field(
        description="One per image: true when the safety checker flagged it (the image is then black, as "
        "fal's), false when it checked it and did not; null when nothing checked it: enable_safety_checker "
        "was false, the endpoint has no checker, or the checker's weights are absent (the status logs and "
        "the server's start-up warning say which). A null is never a pass."
    )


class VideoOutput(BaseModel):
    video: VideoFile
    seed: int
    prompt: str | None = Field(
        default=None, description="The prompt, where fal's answer has it (Wan, not HunyuanVideo)"
    )
    has_nsfw_concepts: list[bool | None] | None = Field(
        default=None,
        description="Beyond fal's video schema, present only when enable_output_safety_checker is true: "
        "[true] when the checker flagged one of the sampled frames (the video is then black, its sound "
        "silent), [false] when "
        "it checked and passed them, [null] when the checker's weights are absent and nothing was checked.",
    )


class UpscaleOutput(BaseModel):
    """One image, as fal's upscalers answer (fal-ai/esrgan), and fal's Wan text-to-image with its seed."""

    image: Image
    seed: int | None = Field(default=None, description="The seed used (generators only; not upscalers).")
    has_nsfw_concepts: list[bool | None] | None = Field(
        default=None,
        description="Beyond fal's schema, present only when enable_output_safety_checker is true: [true] "
        "when the checker flagged the image (it is then black), [false] when it passed, [null] when the "
        "checker's weights are absent and nothing was checked.",
    )


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    ctx: dict[str, Any] | None = None
    input: Any = None


class ErrorBody(BaseModel):
    """darkroom's one error envelope (fal's): a message, or for invalid input the list of issues."""

    detail: str | list[ValidationIssue]
    error_type: str | None = None


class QueueSubmitted(BaseModel):
    status: str
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int
    gateway_request_id: str


_SHARED: dict[str, type[BaseModel]] = {
    "File": File, "Image": Image, "Timings": Timings, "ImageOutput": ImageOutput, "VideoOutput": VideoOutput,
    "UpscaleOutput": UpscaleOutput,
    "ValidationIssue": ValidationIssue, "ErrorBody": ErrorBody, "QueueSubmitted": QueueSubmitted,
}  # fmt: skip


class _Builder:
    """Collects the component schemas while the operations are written."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        for model in _SHARED.values():
            self.ref(model)

    def ref(self, model: type[BaseModel], schema: dict[str, Any] | None = None) -> dict[str, str]:
        if model.__name__ not in self.schemas:
            schema = schema or model.model_json_schema(ref_template="#/components/schemas/{model}")
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def content(self, body: Body) -> dict[str, Any]:
        if body is None:
            return {"application/json": {"schema": {}}}
        if isinstance(body, list):  # one of several media types, the query choosing (JSON or CSV)
            return {k: {"schema": {}} if k == "application/json" else self.content(k)[k] for k in body}
        if isinstance(body, tuple):  # a model in another media type (a form)
            return {body[0]: {"schema": self.ref(body[1])}}
        if isinstance(body, str):  # events are JSON objects, */* anything, other types text or bytes
            return {body: {"schema": {} if body in ("text/event-stream", "*/*") else {"type": "string"}}}
        return {"application/json": {"schema": self.ref(body)}}


def build_document(
    routes: Iterable[web.AbstractRoute],
    endpoints: dict[str, Endpoint],
    choices: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Every route of the app (HEAD aside), with each app's run and queue operations; sampler and
    scheduler fields list ComfyUI's names when ``choices`` (read from a worker) are known. A route
    without an ``@operation`` is a ConfigError: nothing is served undocumented."""
    builder, paths = _Builder(), dict[str, dict[str, Any]]()
    apps = {app_id: e for app_id, e in sorted(endpoints.items()) if not e.raw}
    for route in sorted(routes, key=lambda r: (r.resource.canonical if r.resource else "", r.method)):
        if route.resource is None:
            continue
        method, canonical = route.method, route.resource.canonical
        described = operation_of(route.handler)
        if described is None:
            raise ConfigError(f"{method} {canonical} ({route.handler.__qualname__}) has no @operation")
        if (method, canonical) in PER_APP:
            for app_id, endpoint in apps.items():
                path = canonical.replace("{path}", app_id)
                paths.setdefault(path, {})[method.lower()] = _with_role(
                    _app_operation(builder, method, path, described, endpoint, choices), route.handler
                )
            continue
        patterns = {**path_patterns(route.resource.get_info().get("pattern")), **described.path}
        paths.setdefault(canonical, {})[method.lower()] = _with_role(
            _operation(builder, method.lower(), canonical, described, patterns=patterns), route.handler
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "darkroom", "version": "1", "description": "fal-compatible generation API"},
        "paths": paths,
        "components": {"schemas": builder.schemas, "securitySchemes": _SCHEMES},
        "security": [{"key": []}],
    }


def _operation(
    builder: _Builder, verb: str, path: str, described: Operation, body: dict[str, Any] | None = None,
    ok: dict[str, Any] | None = None, patterns: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    security = _security(verb.upper(), path, described)
    operation_id = verb + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).lstrip("_")  # "/x/" differs from "/x"
    op: dict[str, Any] = {
        "operationId": operation_id, "summary": described.summary, "tags": [described.tag],
        "security": security,
        "responses": _responses(builder, described, ok, secured=bool(security), reads_body=body is not None),
    }  # fmt: skip
    if verb == "head":  # the GET's answers without their bodies (and so without a content type to check)
        op["responses"] = {
            s: {k: v for k, v in r.items() if k != "content"} for s, r in op["responses"].items()
        }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _pattern_schema((patterns or {}).get(name))}
        for name in re.findall(r"\{(\w+)\}", path)
    ]
    for where, params in (("query", described.query), ("header", described.headers)):
        parameters += [
            {"name": name, "in": where, "required": False, "description": p.description, "schema": p.schema()}
            for name, p in params_of(params).items()
        ]
    if parameters:
        op["parameters"] = parameters
    if (body is not None or described.body is not None) and verb not in ("get", "head", "delete"):
        content = body or builder.content(described.body)
        op["requestBody"] = {"required": _body_required(content, builder), "content": content}
    return op


def _body_required(content: dict[str, Any], builder: _Builder) -> bool:
    """A JSON body is required when its model has required fields (without one the server reads {});
    raw bytes are not (no body is an empty file)."""
    for media, entry in content.items():
        ref = entry["schema"].get("$ref", "")
        if media != "application/octet-stream" and ref:
            return bool(builder.schemas[ref.rsplit("/", 1)[-1]].get("required"))
    return False


def path_patterns(pattern: re.Pattern[str] | None) -> dict[str, str]:
    """Each path parameter's regex, from a route's compiled pattern (aiohttp's ``{name:regex}``), as a
    JSON Schema pattern: ``(?s:...)`` (any character, a newline too) spelled with ``[\\s\\S]``."""
    text, found = pattern.pattern if pattern is not None else "", {}
    for match in re.finditer(r"\(\?P<(\w+)>", text):
        depth, end = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0) if text[end - 1] != "\\" else 0
            end += 1
        regex = text[match.end() : end - 1]
        if regex.startswith("(?s:"):
            regex = "(?:" + re.sub(r"(?<!\\)\.", r"[\\s\\S]", regex[4:])
        found[match[1]] = f"^(?:{regex})$"
    return found


def _pattern_schema(pattern: str | None) -> dict[str, Any]:
    return {"type": "string", **({"pattern": pattern} if pattern else {})}


def _app_operation(
    builder: _Builder, method: str, path: str, described: Operation, endpoint: Endpoint,
    choices: dict[str, list[str]] | None,
) -> dict[str, Any]:  # fmt: skip
    schema = endpoint.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    if choices is not None:
        for name in endpoint.params_of(*FIELD_TYPES):
            if endpoint.params[name].honoured is None:  # else the document lists only what is served
                schema["properties"][name]["enum"] = [DEFAULT, *choices[endpoint.params[name].type]]
    body = {"application/json": {"schema": builder.ref(endpoint.request_model, schema)}}
    outputs: dict[str, type[BaseModel]] = {"video": VideoOutput, "image": UpscaleOutput}
    output = outputs.get(endpoint.output.kind, ImageOutput)
    ok = builder.content(output if path.startswith("/run/") else QueueSubmitted)
    return _operation(builder, method.lower(), path, described, body=body, ok=ok)


def _with_role(op: dict[str, Any], handler: object) -> dict[str, Any]:
    """An authenticated operation names the least key role it accepts (``x-darkroom-role``)."""
    if op["security"]:
        op["x-darkroom-role"] = required_role(handler).value
    return op


def _security(method: str, path: str, described: Operation) -> list[dict[str, list[str]]]:
    """Who may call the route, by the rules ``server.api.auth`` enforces."""
    public = path in auth.PUBLIC_PATHS or (
        method in ("GET", "HEAD") and path.startswith(auth.PUBLIC_GET_PREFIX)
    )
    if public or described.schemes == ():
        return []
    if described.schemes is not None:
        return [{scheme: []} for scheme in described.schemes]
    schemes = ["key"]
    if path.startswith(auth.SESSION_ROUTES):
        schemes.append("session")
    if path in auth.TOKEN_ROUTES:
        schemes.append("token")
    return [{scheme: []} for scheme in schemes]


def _responses(
    builder: _Builder, described: Operation, ok: dict[str, Any] | None, *, secured: bool, reads_body: bool
) -> dict[str, Any]:
    statuses: dict[int, str | tuple[str, Any]] = dict(described.responses)
    if secured:
        statuses.setdefault(401, "Missing or invalid credentials")
        statuses.setdefault(403, "The key's role (x-darkroom-role) or its apps do not allow this")
    checked = [*params_of(described.query).values(), *params_of(described.headers).values()]
    if described.body is not None or ok is not None or any(p.pattern or p.enum for p in checked):
        statuses.setdefault(422, "Invalid input: each issue names the field and what is allowed")
    if reads_body or described.body is not None:  # server/api/request.py reads bodies under these limits
        statuses.setdefault(408, "The body arrived too slowly (DARKROOM_CLIENT_TIMEOUT_S)")
        statuses.setdefault(413, "The body is too large (DARKROOM_BODY_MAX_BYTES; uploads: their own limit)")
    statuses.setdefault(500, "Internal error")
    responses: dict[str, Any] = {}
    success = next((s for s in sorted(statuses) if 200 <= s < 300), None)
    for status, promised in sorted(statuses.items()):
        text, body = promised if isinstance(promised, tuple) else (promised, ErrorBody)
        entry: dict[str, Any] = {"description": text}
        refusals = described.refusals.get(status, ())
        if isinstance(promised, tuple):
            entry["content"] = builder.content(body)
        elif status >= 400:
            entry["content"] = _error_content(builder, status, refusals)
        elif status == success and status != 204:
            entry["content"] = ok or builder.content(described.ok)
        if refusals:
            entry[REFUSALS] = list(refusals)
        responses[str(status)] = entry
    return responses


def _error_content(builder: _Builder, status: int, refusals: tuple[str, ...]) -> dict[str, Any]:
    """The error envelope; a 422's error_type named: validation_error (what the schema says), or one of
    the refusals declared for it. Other statuses carry the code of whichever error it was."""
    if status != 422 and not refusals:
        return builder.content(ErrorBody)
    types = [*(["validation_error"] if status == 422 else []), *refusals]
    schema = {"allOf": [builder.ref(ErrorBody)], "properties": {"error_type": {"enum": types}}}
    return {"application/json": {"schema": schema}}


def routes(
    endpoints: dict[str, Endpoint], choices: ComfyChoices, supervisor: Supervisor
) -> list[web.RouteDef]:
    # Built once per endpoint set (publishing changes it) and per whether ComfyUI's sampler lists are known.
    built: dict[tuple[bool, frozenset[str]], dict[str, Any]] = {}

    async def current(app: web.Application) -> dict[str, Any]:
        client = next((w.client for w in supervisor.workers if w.ready), None)
        lists = await choices.lists_if_known(client)
        key = (lists is not None, frozenset(endpoints))
        if key not in built:
            built.clear()
            built[key] = build_document(app.router.routes(), endpoints, lists)
        return built[key]

    @operation("This document", responses={200: "The OpenAPI document"}, tag="health")
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(await current(request.app))

    @operation(
        "The API reference in a browser (Swagger UI)",
        ok="text/html",
        responses={200: "The page"},
        tag="health",
    )
    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_PAGE, content_type="text/html")

    return [web.get("/openapi.json", openapi), web.get("/docs", docs)]

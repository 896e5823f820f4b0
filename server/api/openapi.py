"""The OpenAPI 3.1 document, generated from the workflow mappings, and a docs page that needs no CDN."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server.engine.supervisor import Supervisor
from server.workflows.choices import FIELD_TYPES, ComfyChoices
from server.workflows.mapping import Endpoint
from server.workflows.request_schema import DEFAULT


class File(BaseModel):
    url: str = Field(description="Where to download it: a /files/ URL, or a data URI with sync_mode")
    content_type: str
    file_name: str
    file_size: int


class Image(File):
    width: int
    height: int


class Timings(BaseModel):
    inference: float = Field(description="Seconds on the worker")


class ImageOutput(BaseModel):
    images: list[Image]
    seed: int
    timings: Timings
    prompt: str
    has_nsfw_concepts: list[bool]


class VideoOutput(BaseModel):
    video: File
    seed: int
    prompt: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    ctx: dict[str, Any] | None = None
    input: Any = None


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


class ErrorBody(BaseModel):
    detail: str
    error_type: str | None = None


_SHARED: dict[str, type[BaseModel]] = {
    "File": File,
    "Image": Image,
    "Timings": Timings,
    "ImageOutput": ImageOutput,
    "VideoOutput": VideoOutput,
    "ValidationIssue": ValidationIssue,
    "ValidationErrorBody": ValidationErrorBody,
    "ErrorBody": ErrorBody,
}


def build_document(
    endpoints: dict[str, Endpoint], choices: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """One POST /run/{app_id} operation per endpoint, its input schema taken from its mapping;
    sampler and scheduler fields list ComfyUI's names when ``choices`` (read from a worker) are known."""
    schemas: dict[str, Any] = {}
    for name, model in _SHARED.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    paths: dict[str, Any] = {}
    for app_id, endpoint in sorted(endpoints.items()):
        if endpoint.raw:
            continue  # the editor's runs: not an API for clients
        input_name = endpoint.request_model.__name__
        schema = endpoint.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        if choices is not None:
            for name in endpoint.params_of(*FIELD_TYPES):
                schema["properties"][name]["enum"] = [DEFAULT, *choices[endpoint.params[name].type]]
        schemas[input_name] = schema
        paths[f"/run/{app_id}"] = {"post": _operation(app_id, endpoint, input_name)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "darkroom", "version": "1", "description": "fal-compatible generation API"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "falKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Key <key>`",
                }
            },
        },
        "security": [{"falKey": []}],
    }


def _operation(app_id: str, endpoint: Endpoint, input_name: str) -> dict[str, Any]:
    output = "VideoOutput" if endpoint.output.kind == "video" else "ImageOutput"

    def body(schema: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}

    return {
        "operationId": "run_" + "".join(c if c.isalnum() else "_" for c in app_id),
        "summary": f"Run {app_id} and wait for the result",
        "description": "Also available through the queue: POST /queue/" + app_id,
        "requestBody": {"required": True, "content": body(input_name)},
        "responses": {
            "200": {"description": "The output", "content": body(output)},
            "404": {"description": "Unknown app", "content": body("ErrorBody")},
            "422": {
                "description": "Invalid input: each issue names the field and what is allowed",
                "content": body("ValidationErrorBody"),
            },
            "503": {
                "description": "Model files missing or no worker available",
                "content": body("ErrorBody"),
            },
        },
    }


def render_docs(document: dict[str, Any]) -> str:
    """A plain HTML page listing every endpoint's fields, types, defaults and ranges."""
    schemas = document["components"]["schemas"]
    sections = []
    for path, item in document["paths"].items():
        input_ref = item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[input_ref.rsplit("/", 1)[1]]
        rows = "".join(
            _row(name, prop, name in schema.get("required", []))
            for name, prop in schema["properties"].items()
        )
        sections.append(
            f"<h2><code>POST {html.escape(path)}</code></h2><table><tr><th>field</th><th>type</th>"
            f"<th>default</th><th>allowed</th><th>description</th></tr>{rows}</table>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>darkroom API</title><style>body{font:15px system-ui;"
        "margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}</style><h1>darkroom API</h1><p>fal-compatible; the machine-readable document is "
        "<a href=/openapi.json>/openapi.json</a>.</p>" + "".join(sections)
    )


def _row(name: str, prop: dict[str, Any], required: bool) -> str:
    kind = prop.get("type") or " | ".join(
        str(o.get("type", o.get("$ref", "?")).rsplit("/", 1)[-1])
        for o in prop.get("anyOf", prop.get("oneOf", []))
    )
    allowed = [f"{k} {prop[k]}" for k in ("minimum", "maximum", "minLength", "maxLength") if k in prop]
    if "enum" in prop:
        allowed.append(", ".join(map(str, prop["enum"])))
    default = "required" if required else html.escape(repr(prop.get("default")))
    cells = [
        f"<code>{html.escape(name)}</code>",
        html.escape(str(kind)),
        default,
        html.escape("; ".join(allowed)),
        html.escape(prop.get("description", "")),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def routes(
    endpoints: dict[str, Endpoint], choices: ComfyChoices, supervisor: Supervisor
) -> list[web.RouteDef]:
    # Built once per endpoint set (publishing changes it) and per whether ComfyUI's sampler lists are known.
    built: dict[tuple[bool, frozenset[str]], tuple[dict[str, Any], str]] = {}

    async def current() -> tuple[dict[str, Any], str]:
        client = next((w.client for w in supervisor.workers if w.ready), None)
        lists = await choices.lists_if_known(client)
        key = (lists is not None, frozenset(endpoints))
        if key not in built:
            built.clear()
            document = build_document(endpoints, lists)
            built[key] = (document, render_docs(document))
        return built[key]

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response((await current())[0])

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=(await current())[1], content_type="text/html")

    return [web.get("/openapi.json", openapi), web.get("/docs", docs)]

"""A workflow published from the editor: its API-format prompt, with darkroom's input nodes marking the
request fields (``DarkroomInput*``) and one of darkroom's save nodes the output, becomes an Endpoint.

Every check runs before anything is served, and each failure is a 422 naming the node: unknown node
types, values a node does not offer (a missing model file named with its fetch command), two inputs
with one field name, reserved field names, no output node or several.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from server.engine.models import Manifest
from server.errors import RequestValidationError
from server.workflows.mapping import Endpoint, OutputSpec
from server.workflows.request_schema import ParamSpec, ParamType, request_model

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# darkroom gives every published endpoint sync_mode; request_id is the realtime protocol's; fal_* are
# fal's query parameters and headers.
RESERVED_FIELDS = frozenset({"sync_mode", "request_id"})
RESERVED_PREFIX = "fal_"
MIN_SIDE = 16  # DarkroomInputImageSize's smallest width/height
OUTPUT_NODES = {"DarkroomSaveImage": "images", "DarkroomSaveVideo": "video"}
SYNC_MODE_FIELD = "sync_mode"
SYNC_MODE = ParamSpec(type="boolean", default=False, description="Return files as data URIs instead of URLs.")

Inputs = Mapping[str, Any]


def endpoint_from_prompt(
    app_id: str, prompt: Any, *, node_types: Mapping[str, Any] | None, manifest: Manifest
) -> Endpoint:
    """The endpoint serving ``prompt``; ``node_types`` is a worker's /object_info (None skips the checks
    that need one, for workflows already checked when they were published)."""
    nodes = _nodes(prompt)
    errors: list[dict[str, Any]] = []
    if node_types is not None:
        errors += _check_node_types(nodes, node_types, manifest)
    params, param_errors = _params(nodes)
    output, output_errors = _output(nodes)
    errors += param_errors + output_errors
    if errors:
        raise RequestValidationError(errors)
    assert output is not None
    params[SYNC_MODE_FIELD] = SYNC_MODE
    model_name = "Input_" + "".join(c if c.isalnum() else "_" for c in app_id)
    return Endpoint(
        app_id=app_id, workflow=nodes, params=params, models={}, fixed={}, lookups={}, output=output,
        request_model=request_model(model_name, params),
    )  # fmt: skip


def _error(node_id: str | None, message: str, kind: str, *where: str) -> dict[str, Any]:
    loc = ["body", "prompt", *([node_id] if node_id is not None else []), *where]
    return {"loc": loc, "msg": message, "type": kind}


def _nodes(prompt: Any) -> dict[str, dict[str, Any]]:
    """The prompt as {node id: {class_type, inputs, ...}}, or a 422 saying what shape it must have."""
    if not isinstance(prompt, dict) or not prompt:
        raise RequestValidationError(
            [
                _error(
                    None,
                    "prompt must be a non-empty API-format workflow: {node id: {class_type, inputs}}",
                    "type",
                )
            ]
        )
    bad = [
        _error(str(node_id), "each node needs a string class_type and an inputs object", "node_shape")
        for node_id, node in prompt.items()
        if not (
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs", {}), dict)
        )
    ]
    if bad:
        raise RequestValidationError(bad)
    return {str(k): {**v, "inputs": dict(v.get("inputs", {}))} for k, v in prompt.items()}


def _check_node_types(
    nodes: dict[str, dict[str, Any]], node_types: Mapping[str, Any], manifest: Manifest
) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for node_id, node in nodes.items():
        class_type = node["class_type"]
        info = node_types.get(class_type)
        if info is None:
            errors.append(
                _error(
                    node_id, f"unknown node type {class_type!r}: no worker has it installed", "unknown_node"
                )
            )
            continue
        replaced = _request_targets(class_type)
        for name, value in node["inputs"].items():
            options = _options(info, name)
            if options is None or name in replaced or isinstance(value, list) or value in options:
                continue
            errors.append(
                _error(
                    node_id,
                    _not_offered(class_type, name, value, options, manifest),
                    "value_not_offered",
                    "inputs",
                    name,
                )
            )
    return errors


def _options(info: Mapping[str, Any], name: str) -> list[Any] | None:
    """A dropdown input's choices from /object_info (old ``[[...], {}]`` or v3 ``["COMBO", {options}]``)."""
    spec = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}.get(
        name
    )
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _not_offered(class_type: str, name: str, value: Any, options: list[Any], manifest: Manifest) -> str:
    for model_name, entry in manifest.models.items():
        if value in (entry.folder_name, entry.file):
            verb = "build" if entry.source.generated else "fetch"
            return (
                f"{class_type}.{name}: model file {value!r} is not in the models folder; "
                f"{verb} it with `{manifest.command_for(model_name)}`"
            )
    shown = ", ".join(map(repr, options[:20])) + (", ..." if len(options) > 20 else "")
    return f"{class_type}.{name}: {value!r} is not offered here; the worker offers {len(options)}: {shown}"


def _output(nodes: dict[str, dict[str, Any]]) -> tuple[OutputSpec | None, list[dict[str, Any]]]:
    found = [
        (node_id, OUTPUT_NODES[n["class_type"]])
        for node_id, n in nodes.items()
        if n["class_type"] in OUTPUT_NODES
    ]
    if len(found) == 1:
        node_id, kind = found[0]
        return OutputSpec.model_validate({kind: node_id}), []
    if not found:
        message = "no output node: end the workflow with a Darkroom Save Image or Darkroom Save Video node"
        return None, [_error(None, message, "no_output")]
    ids = ", ".join(node_id for node_id, _ in found)
    return None, [
        _error(node_id, f"several output nodes ({ids}): an endpoint answers from one", "several_outputs")
        for node_id, _ in found
    ]


def _params(nodes: dict[str, dict[str, Any]]) -> tuple[dict[str, ParamSpec], list[dict[str, Any]]]:
    params: dict[str, ParamSpec] = {}
    owners: dict[str, str] = {}
    errors: list[dict[str, Any]] = []
    for node_id, node in sorted(nodes.items(), key=lambda item: _node_order(item[0])):
        build = _BUILDERS.get(node["class_type"])
        if build is None:
            continue
        inputs = node["inputs"]
        field = inputs.get("field")
        problem = _field_problem(field, owners)
        if problem:
            errors.append(_error(node_id, problem, "field_name", "inputs", "field"))
            continue
        assert isinstance(field, str)
        try:
            params[field] = build(node_id, inputs)
        except (TypeError, ValueError, KeyError) as e:
            errors.append(_error(node_id, f"{node['class_type']}: {e}", "input_node"))
            continue
        owners[field] = node_id
    return params, errors


def _field_problem(field: Any, owners: dict[str, str]) -> str | None:
    if not isinstance(field, str) or not FIELD_NAME.match(field):
        return f"field must be a lower-case identifier (a-z, 0-9, _; starting with a letter), got {field!r}"
    if field in RESERVED_FIELDS or field.startswith(RESERVED_PREFIX):
        return f"field {field!r} is reserved (reserved: {', '.join(sorted(RESERVED_FIELDS))}, fal_*)"
    if field in owners:
        return f"field {field!r} is already set by node {owners[field]}: each field needs its own name"
    return None


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isascii() and node_id.isdigit() else (1 << 62, node_id)  # not "²"


def _literal(inputs: Inputs, name: str, kind: type | tuple[type, ...]) -> Any:
    value = inputs.get(name)
    if isinstance(value, list):
        raise ValueError(f"{name} must be a value in the node, not a link from another node")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _description(inputs: Inputs) -> str:
    value = inputs.get("description", "")
    return value if isinstance(value, str) else ""


def _text(node_id: str, inputs: Inputs) -> ParamSpec:
    required = bool(_literal(inputs, "required", bool))
    return ParamSpec(
        type="string", required=required, default=None if required else _literal(inputs, "value", str),
        min_length=1 if required else None, max_length=_literal(inputs, "max_length", int),
        description=_description(inputs), to=[f"{node_id}.value"],
    )  # fmt: skip


def _bounded(kind: type, param_type: ParamType) -> Callable[[str, Inputs], ParamSpec]:
    def build(node_id: str, inputs: Inputs) -> ParamSpec:
        number = (int, float) if kind is float else int
        low, high, value = (_literal(inputs, name, number) for name in ("min", "max", "value"))
        if not low <= value <= high:
            raise ValueError(f"value {value} is outside min {low} .. max {high}")
        return ParamSpec(
            type=param_type,
            default=value,
            ge=low,
            le=high,
            description=_description(inputs),
            to=[f"{node_id}.value"],
        )

    return build


def _boolean(node_id: str, inputs: Inputs) -> ParamSpec:
    value = _literal(inputs, "value", bool)
    return ParamSpec(type="boolean", default=value, description=_description(inputs), to=[f"{node_id}.value"])


def _choice(node_id: str, inputs: Inputs) -> ParamSpec:
    text = _literal(inputs, "choices", str)
    values = [c.strip() for c in text.replace("\n", ",").split(",") if c.strip()]
    value = _literal(inputs, "value", str)
    if value not in values:
        raise ValueError(f"value {value!r} is not one of the choices {values}")
    return ParamSpec(
        type="enum", values=values, default=value, description=_description(inputs), to=[f"{node_id}.value"]
    )


def _seed(node_id: str, inputs: Inputs) -> ParamSpec:
    return ParamSpec(type="seed", description=_description(inputs), to=[f"{node_id}.value"])


def _image(node_id: str, inputs: Inputs) -> ParamSpec:
    return ParamSpec(
        type="image_url", required=True, description=_description(inputs), to=[f"{node_id}.image"]
    )


def _image_size(node_id: str, inputs: Inputs) -> ParamSpec:
    width, height, low, high, step = (
        _literal(inputs, name, int) for name in ("width", "height", "min_side", "max_side", "multiple_of")
    )
    if low < MIN_SIDE:
        raise ValueError(f"min_side must be at least {MIN_SIDE} (the smallest side the size node takes)")
    if not low <= min(width, height) <= max(width, height) <= high:
        raise ValueError(
            f"width {width} and height {height} must lie within min_side {low} .. max_side {high}"
        )
    return ParamSpec(
        type="image_size", default={"width": width, "height": height}, ge=low, le=high, multiple_of=step,
        description=_description(inputs), to={"width": [f"{node_id}.width"], "height": [f"{node_id}.height"]},
    )  # fmt: skip


def _loras(node_id: str, inputs: Inputs) -> ParamSpec:
    value = _literal(inputs, "value", str)
    try:
        default = json.loads(value or "[]")
    except json.JSONDecodeError as e:
        raise ValueError(f"value is not a JSON list of LoRAs: {e}") from e
    if not isinstance(default, list):
        raise ValueError(f"value must be a JSON list of LoRAs, got {type(default).__name__}")
    return ParamSpec(
        type="loras", default=default, max_length=_literal(inputs, "max_count", int),
        description=_description(inputs), to=[f"{node_id}.value"],
    )  # fmt: skip


_BUILDERS: dict[str, Callable[[str, Inputs], ParamSpec]] = {
    "DarkroomInputText": _text,
    "DarkroomInputInt": _bounded(int, "integer"),
    "DarkroomInputFloat": _bounded(float, "number"),
    "DarkroomInputBoolean": _boolean,
    "DarkroomInputChoice": _choice,
    "DarkroomInputSeed": _seed,
    "DarkroomInputImage": _image,
    "DarkroomInputImageSize": _image_size,
    "DarkroomInputLoras": _loras,
}


def _request_targets(class_type: str) -> frozenset[str]:
    """The inputs of an input node that a request replaces (not checked against the editor's options)."""
    return frozenset({"image"}) if class_type == "DarkroomInputImage" else frozenset()

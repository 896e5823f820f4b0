"""A built-in endpoint as a workflow the editor can open: its graph with the endpoint's models bound and
its request fields as darkroom's input nodes, so it runs in the editor, can be changed there and
published under a new name (``published.py`` reads the same nodes back).

Fields with no node input of their own stay the graph's values: beyond-fal overrides (sampler,
scheduler, sigmas, model files, blends), switches without targets (sync_mode) and lookup keys;
acceleration stays the endpoint's default level (its cache node, if any, is in the graph).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from server.engine.models import Manifest
from server.workflows.mapping import Endpoint, ImageInput, MediaInput
from server.workflows.published import MIN_SIDE
from server.workflows.request_schema import IMAGE_SIZE_PRESETS, ParamSpec

Prompt = dict[str, dict[str, Any]]
_STAND_IN = "data:image/png;base64,"


def marked_prompt(endpoint: Endpoint, manifest: Manifest) -> Prompt:
    """The endpoint's API-format prompt at its defaults, each request field behind an input node."""
    prompt, _ = endpoint.build_prompt(_defaults(endpoint), manifest, _placeholders(endpoint))
    next_id = max((int(k) for k in prompt if k.isdigit()), default=0) + 1
    for name, spec in endpoint.params.items():
        if spec.type == "image_url" and isinstance(spec.to, list):
            for target in spec.to:
                _replace_loader(prompt, target, str(next_id), name, spec.description)
                next_id += 1
            continue
        node = _input_node(name, spec, prompt, endpoint.workflow)
        if node is None:
            continue
        node_id = str(next_id)
        next_id += 1
        prompt[node_id] = node
        _link(prompt, spec, node_id)
    return prompt


def _replace_loader(prompt: Prompt, target: str, node_id: str, name: str, description: str) -> None:
    """An image field's LoadImage becomes a DarkroomInputImage (same IMAGE output in slot 0)."""
    loader_id, _, _ = target.partition(".")
    loader = prompt.get(loader_id)
    if loader is None or loader.get("class_type") != "LoadImage":
        return
    uses_mask = any(v == [loader_id, 1] for node in prompt.values() for v in node["inputs"].values())
    if uses_mask:
        return  # the mask output has no counterpart: keep the loader (and no field)
    prompt[node_id] = {
        "class_type": "DarkroomInputImage",
        "inputs": {"field": name, "description": description, "image": loader["inputs"].get("image", "")},
        "_meta": {"title": f"Input: {name}"},
    }
    for node in prompt.values():
        for input_name, value in node["inputs"].items():
            if value == [loader_id, 0]:
                node["inputs"][input_name] = [node_id, 0]
    del prompt[loader_id]


def _defaults(endpoint: Endpoint) -> BaseModel:
    """A request of defaults; a required field takes the graph's own value (or a stand-in)."""
    body: dict[str, Any] = {}
    for name, spec in endpoint.params.items():
        if spec.type == "archive_url":  # a trainer's zip: the graph keeps its own folder (_placeholders)
            body[name] = "data:application/zip;base64,"
        elif spec.type in ("image_url", "image_urls", "video_url", "audio_url") and spec.required:
            # A stand-in the URL check accepts: build_prompt takes the graph's own files (_placeholders).
            body[name] = [_STAND_IN] if spec.type == "image_urls" else _STAND_IN
        elif spec.required and spec.type == "loras":
            body[name] = []  # the graph's own stack is empty (fal's /lora endpoints require the field)
        elif spec.required:
            own = _first_value(endpoint.workflow, spec.to) if isinstance(spec.to, list) and spec.to else None
            body[name] = own if isinstance(own, str) and own else "placeholder"
    return endpoint.validate(body)


def _placeholders(endpoint: Endpoint) -> dict[str, Any]:
    """What build_prompt needs for I/O-backed fields: no LoRAs; images, videos and sounds as the graph has
    them, square (an "auto" aspect ratio, a lookup key, resolves as for a square input and stays fixed)."""
    prepared: dict[str, Any] = {name: [] for name in endpoint.params_of("loras")}
    for name in endpoint.params_of("image_url"):
        spec = endpoint.params[name]
        current = _first_value(endpoint.workflow, spec.to) if isinstance(spec.to, list) and spec.to else ""
        prepared[name] = ImageInput(str(current or ""), 1, 1)
    for name in endpoint.params_of("archive_url"):
        spec = endpoint.params[name]
        prepared[name] = _first_value(endpoint.workflow, spec.to) if isinstance(spec.to, list) else ""
    for name in endpoint.params_of("image_urls"):
        prepared[name] = [ImageInput(image, 1, 1) for image in _graph_images(endpoint, endpoint.params[name])]
    for name in endpoint.params_of("video_url", "audio_url"):  # no input node: the graph's file stays
        spec = endpoint.params[name]
        current = _first_value(endpoint.workflow, spec.to) if isinstance(spec.to, list) and spec.to else ""
        prepared[name] = MediaInput(str(current or ""), 0.0, width=1, height=1)
    return prepared


def _graph_images(endpoint: Endpoint, spec: ParamSpec) -> list[str]:
    """An image_urls field's images as the graph names them (a JSON list; the field gets no input node:
    the editor has none for a list of images, so the graph's stay)."""
    current = _first_value(endpoint.workflow, spec.to) if isinstance(spec.to, list) and spec.to else None
    images = json.loads(current) if isinstance(current, str) and current.startswith("[") else []
    return [str(image) for image in images]


def _first_value(prompt: Prompt, targets: list[str]) -> Any:
    node_id, _, input_name = targets[0].partition(".")
    return prompt[node_id]["inputs"].get(input_name)


def _input_node(name: str, spec: ParamSpec, prompt: Prompt, original: Prompt) -> dict[str, Any] | None:
    targets = spec.to if isinstance(spec.to, list) else []
    common = {"field": name, "description": spec.description}
    kind, inputs = _node_inputs(spec, targets, prompt, original)
    if kind is None:
        return None
    return {"class_type": kind, "inputs": {**common, **inputs}, "_meta": {"title": f"Input: {name}"}}


def _node_inputs(
    spec: ParamSpec, targets: list[str], prompt: Prompt, original: Prompt
) -> tuple[str | None, dict[str, Any]]:
    if spec.type == "image_size" and isinstance(spec.to, dict):
        width, height = _size(spec.default)
        low, high = max(MIN_SIDE, int(spec.ge or MIN_SIDE)), int(spec.le or 16384)
        return "DarkroomInputImageSize", {
            "width": width, "height": height, "min_side": low, "max_side": high,
            "multiple_of": spec.multiple_of or 1,
        }  # fmt: skip
    if not targets or spec.cache:
        return None, {}
    value = spec.default if spec.default is not None else _first_value(prompt, targets)
    if spec.type == "string":
        return "DarkroomInputText", {
            "value": value if isinstance(value, str) else "", "required": spec.required,
            "max_length": spec.max_length or 10000,
        }  # fmt: skip
    # An integer field that sets a float input (a video's fps) needs the Float node: INT will not link.
    if spec.type == "integer" and not isinstance(_first_value(original, targets), float):
        low, high = (int(b if b is not None else value) for b in (spec.ge, spec.le))
        return "DarkroomInputInt", {"value": int(value), "min": low, "max": high, "step": 1}
    if spec.type in ("integer", "number"):
        low_f, high_f = (float(b if b is not None else value) for b in (spec.ge, spec.le))
        return "DarkroomInputFloat", {"value": float(value), "min": low_f, "max": high_f, "step": 0.01}
    if spec.type == "boolean":
        return "DarkroomInputBoolean", {"value": bool(value)}
    if spec.type == "enum" and spec.values and not spec.auto_from:
        return "DarkroomInputChoice", {"choices": ", ".join(spec.values), "value": str(value)}
    if spec.type == "seed":
        seed = _first_value(prompt, targets)
        return "DarkroomInputSeed", {"value": seed if isinstance(seed, int) else 0}
    if spec.type == "loras":
        return "DarkroomInputLoras", {
            "value": json.dumps(spec.default or []),
            "max_count": spec.max_length or 8,
        }
    return None, {}


def _size(default: Any) -> tuple[int, int]:
    if isinstance(default, str) and default in IMAGE_SIZE_PRESETS:  # not "auto": the input image's size
        return IMAGE_SIZE_PRESETS[default]
    if isinstance(default, dict):
        return int(default["width"]), int(default["height"])
    return 1024, 1024


def _link(prompt: Prompt, spec: ParamSpec, node_id: str) -> None:
    """Each target input now takes the input node's output (image sizes: width slot 0, height slot 1)."""
    parts = spec.to.items() if isinstance(spec.to, dict) else [("value", spec.to)]
    for part, targets in parts:
        slot = 1 if part == "height" else 0
        for target in targets:
            target_id, _, input_name = target.partition(".")
            prompt[target_id]["inputs"][input_name] = [node_id, slot]

"""An endpoint as a form needs it: every request field with its type, default, bounds, choices and
description, whether it is one of darkroom's fields beyond fal's ("advanced"), what the endpoint
returns, and which model files it reads. The playground builds its form from this; API clients may too.
"""

from __future__ import annotations

from typing import Any

from server.engine.models import Manifest
from server.workflows.choices import FIELD_TYPES
from server.workflows.mapping import Endpoint
from server.workflows.request_schema import DEFAULT, IMAGE_SIZE_PRESETS, SEED_MAX, LoraEntry, ParamSpec

_BOUNDS = ("ge", "le", "min_length", "max_length", "multiple_of")


def describe(endpoint: Endpoint, manifest: Manifest, choices: dict[str, list[str]] | None) -> dict[str, Any]:
    """The endpoint's fields in declaration order (required ones first), its output kind and the manifest
    names of its model files. Sampler and scheduler fields list ComfyUI's names when ``choices`` (read from
    a worker) are known, else only "default"."""
    fields = [_field(name, spec, choices) for name, spec in endpoint.params.items()]
    fields.sort(key=lambda f: not f["required"])
    return {
        "app_id": endpoint.app_id,
        "output": endpoint.output.kind,
        "fields": fields,
        "models": model_names(endpoint, manifest),
    }


def _field(name: str, spec: ParamSpec, choices: dict[str, list[str]] | None) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": name, "type": spec.type, "required": spec.required, "default": spec.default,
        "description": spec.description, "advanced": spec.advanced,
    }  # fmt: skip
    described.update({k: getattr(spec, k) for k in _BOUNDS if getattr(spec, k) is not None})
    if spec.type == "enum":
        described["choices"] = list(spec.values or [])
    elif spec.type in FIELD_TYPES:
        described["choices"] = [DEFAULT, *(choices or {}).get(spec.type, [])]
    elif spec.type == "image_size":
        described["presets"] = {k: {"width": w, "height": h} for k, (w, h) in IMAGE_SIZE_PRESETS.items()}
        described["presets"].update(dict.fromkeys(spec.values or []))  # "auto": the input image's size
    elif spec.type == "seed":
        described.update(ge=0, le=SEED_MAX)
    elif spec.type == "loras":
        described["item"] = LoraEntry.model_json_schema()
    return described


def model_names(endpoint: Endpoint, manifest: Manifest) -> list[str]:
    """Manifest entries the endpoint loads: those its mapping binds, and (for published workflows, which
    name files directly) those whose file name appears as a node input value."""
    names = list(dict.fromkeys(endpoint.models.values()))
    values = {
        value
        for node_id, node in endpoint.workflow.items()
        if isinstance(node, dict)
        for input_name, value in (node.get("inputs") or {}).items()
        if isinstance(value, str) and f"{node_id}.{input_name}" not in endpoint.models  # bound: replaced
    }
    for name, entry in sorted(manifest.models.items()):
        if name not in names and entry.folder_name in values:
            names.append(name)
    return names

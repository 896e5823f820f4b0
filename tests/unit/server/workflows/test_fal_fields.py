"""Each fal endpoint's request model has fal's fields: names, types, required, defaults, bounds, enums.

fal_fields.yaml is derived from ../shared/docs/fal-catalog/ by scripts/fal_fields.py (its entries say
which of fal's generated client types they follow). A default is compared where the catalog gives one;
bounds where the entry's source carries them (zod types), and there a bound darkroom adds that fal does
not have is a drift too. image_size's bounds are those of its {width, height} branch, which the field
lists do not carry, so they are not compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.engine.models import load_manifest
from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints

FAL_FIELDS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "fal_fields.yaml").read_text())
ENDPOINTS = load_endpoints(WORKFLOWS_DIR, load_manifest())
SERVED = sorted(app for app in ENDPOINTS if app in FAL_FIELDS)
# fal endpoints darkroom serves whose field lists the catalog does not have (no check possible here).
NOT_IN_CATALOG = {
    "fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/flux-lora", "fal-ai/wan/v2.2-5b/image-to-video",
}  # fmt: skip
# Types fal's TypeScript-only entries give as "number" where its docs say integer.
_SAME_TYPE = {("number", "integer")}


def test_every_fal_endpoint_served_is_checked_or_known_absent_from_the_catalog() -> None:
    fal = {app for app in ENDPOINTS if not app.startswith("darkroom/")}
    assert fal - set(SERVED) == NOT_IN_CATALOG
    assert "fal-ai/flux-2" in SERVED and "fal-ai/wan/v2.2-a14b/image-to-video" in SERVED


@pytest.mark.parametrize("app_id", SERVED)
def test_request_model_has_fals_fields(app_id: str) -> None:
    entry = FAL_FIELDS[app_id]
    endpoint = ENDPOINTS[app_id]
    ours = {name: spec for name, spec in endpoint.params.items() if not spec.advanced}
    assert sorted(ours) == sorted(entry["fields"]), f"{app_id}: field names differ from fal's"
    problems = []
    for name, fal in entry["fields"].items():
        spec = ours[name]
        if spec.type != fal["type"] and (fal["type"], spec.type) not in _SAME_TYPE:
            problems.append(f"{name}: type {spec.type}, fal's {fal['type']}")
        if spec.required != fal.get("required", False):
            problems.append(f"{name}: required {spec.required}, fal's {fal.get('required', False)}")
        if "default" in fal and spec.default != fal["default"]:
            problems.append(f"{name}: default {spec.default!r}, fal's {fal['default']!r}")
        if "values" in fal and sorted(spec.values or []) != sorted(fal["values"]):
            problems.append(f"{name}: values {spec.values}, fal's {fal['values']}")
        if entry["bounds_known"] and spec.type != "image_size":
            for bound in ("ge", "le"):
                if getattr(spec, bound) != fal.get(bound):
                    problems.append(f"{name}: {bound} {getattr(spec, bound)}, fal's {fal.get(bound)}")
    assert not problems, f"{app_id} drifts from fal's field list: " + "; ".join(problems)


@pytest.mark.parametrize("app_id", SERVED)
def test_the_schema_default_is_fals_and_only_sent_values_are_refused(app_id: str) -> None:
    """A field darkroom cannot fully honour keeps fal's default; a value it cannot honour, sent, is a
    422 naming the field and why; the values it can are accepted."""
    endpoint = ENDPOINTS[app_id]
    limited = {name: spec for name, spec in endpoint.params.items() if spec.honoured is not None}
    required = {name: _example(spec) for name, spec in endpoint.params.items() if spec.required}
    assert endpoint.validate(required)  # fal's defaults, left out, are never refused
    for name, spec in limited.items():
        for value in spec.honoured or []:
            assert getattr(endpoint.validate({**required, name: value}), name) == value
        refused = [v for v in _candidates(spec) if v not in (spec.honoured or [])]
        assert refused, f"{name}: nothing to refuse"
        for value in refused:
            with pytest.raises(ValueError) as caught:
                endpoint.validate({**required, name: value})
            assert spec.unhonoured and spec.unhonoured in str(caught.value) and name in str(caught.value)


def _candidates(spec: Any) -> list[Any]:
    """Every value the field's type and bounds allow (its enum, both booleans, its integer range; a
    string: the honoured ones and one other; an object: null and one of fal's shape; a blend: null and
    one)."""
    if spec.type == "boolean":
        return [True, False]
    if spec.type == "integer":
        return list(range(int(spec.ge), int(spec.le) + 1))
    if spec.type == "string":
        return [*spec.honoured, "something else"]
    others = {
        "image_url": "https://example.com/a.png", "sampler": "euler", "scheduler": "karras", "number": 0.5,
        "sigmas": [1.0, 0.5, 0.0], "model_file": "other.safetensors",
        "model_blend": [{"model": "a", "weight": 1}],
    }  # fmt: skip
    if spec.type in others:
        return [*spec.honoured, others[spec.type]]
    if spec.type == "object":
        return [None, {"path": "https://example.com/a.safetensors", "image_url": "https://example.com/a.png"}]
    if spec.type == "model_blend":
        return [None, [{"model": "a-model", "weight": 1}]]
    return list(spec.values)


def _example(spec: Any) -> Any:
    examples = {
        "string": "a lighthouse",
        "image_url": "https://example.com/a.png",
        "video_url": "https://example.com/a.mp4",
        "audio_url": "https://example.com/a.wav",
        "archive_url": "https://example.com/a.zip",
        "loras": [{"path": "https://example.com/a.safetensors"}],
    }
    return examples.get(spec.type, ["https://example.com/a.png"])

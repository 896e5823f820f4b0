"""fal's ``acceleration`` on every endpoint where fal has it, backed by ComfyUI's step caches: the
field's levels and default are fal's, its description says what each level does, and the graph gets the
cache node of the level before each sampler input (``none``: exactly the graph without the field)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.engine.models import load_manifest
from server.workflows import acceleration
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, MappingError, load_endpoints

FAL_FIELDS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "fal_fields.yaml").read_text())
MANIFEST = load_manifest()
ENDPOINTS = load_endpoints(WORKFLOWS_DIR, MANIFEST)
# fal's acceleration where the catalog has no entry: ../shared/docs/fal-api.md section 6 (fal's llms.txt
# pages). The Wan 2.2 5B endpoints have no such field (the catalog's text-to-video entry has none).
NOT_IN_CATALOG = {
    "fal-ai/flux/dev": {"default": "none", "values": ["none", "regular", "high"]},
    "fal-ai/flux/schnell": {"default": "none", "values": ["none", "regular", "high"]},
    "fal-ai/flux-lora": {"default": "none", "values": ["none", "regular"]},
    "fal-ai/wan/v2.2-5b/image-to-video": None,
}


def _fals(app_id: str) -> dict[str, Any] | None:
    if app_id in NOT_IN_CATALOG:
        return NOT_IN_CATALOG[app_id]
    return FAL_FIELDS[app_id]["fields"].get("acceleration")


FAL_APPS = sorted(
    a for a in ENDPOINTS if not a.startswith("darkroom/") and (a in FAL_FIELDS or a in NOT_IN_CATALOG)
)


def _request(endpoint: Endpoint, **fields: Any) -> Any:
    examples = {
        "image_url": "https://example.com/a.png",
        "image_urls": ["https://example.com/a.png"],
        "video_url": "https://example.com/a.mp4",
        "audio_url": "https://example.com/a.wav",
        "loras": [{"path": "https://example.com/a.safetensors"}],
    }
    required = {
        name: examples.get(spec.type, "a lighthouse")
        for name, spec in endpoint.params.items()
        if spec.required
    }
    return endpoint.validate({**required, "seed": 7, **fields})


def _graph(endpoint: Endpoint, **fields: Any) -> dict[str, Any]:
    from server.workflows.mapping import ImageInput, MediaInput

    prepared: dict[str, Any] = {
        name: [ImageInput("in.png", 64, 64)] if spec.type == "image_urls" else ImageInput("in.png", 64, 64)
        for name, spec in endpoint.params.items()
        if spec.type in ("image_url", "image_urls")
    }
    prepared |= {
        name: MediaInput("in.mp4", 1.0, 16, 16.0, 64, 64, 16000)
        for name, spec in endpoint.params.items()
        if spec.type in ("video_url", "audio_url")
    }
    return endpoint.build_prompt(_request(endpoint, **fields), MANIFEST, prepared)[0]


@pytest.mark.parametrize("app_id", FAL_APPS)
def test_acceleration_is_fals_field_with_fals_levels_and_default(app_id: str) -> None:
    fal, ours = _fals(app_id), ENDPOINTS[app_id].params.get("acceleration")
    if fal is None:
        assert ours is None, f"{app_id}: fal has no acceleration here"
        return
    assert ours is not None and ours.cache in acceleration.CACHE_NODES, f"{app_id}: no step cache behind it"
    assert ours.values == fal["values"]
    # fal's levels beyond darkroom's caches (LTX-2's "full") are refused, the others all served
    refused = set(ours.values) - set(ours.honoured if ours.honoured is not None else ours.values)
    assert refused.isdisjoint({acceleration.NONE, *acceleration.LEVELS})
    # The a14b image-to-video entry names no default: the family's (fal's text-to-video) stands.
    assert ours.default == fal.get("default", "regular")
    assert _request(ENDPOINTS[app_id]).acceleration == ours.default


def test_each_demo_twin_has_its_fal_endpoints_field() -> None:
    """A demo twin (same graph and fields as fal endpoints) declares acceleration as one of them does."""
    twins = 0
    for app_id, demo in ENDPOINTS.items():
        siblings = [
            e
            for e in ENDPOINTS.values()
            if not e.app_id.startswith("darkroom/")
            and e.workflow is demo.workflow
            and set(e.params) == set(demo.params)
        ]
        if not app_id.startswith("darkroom/") or not siblings:
            continue
        ours = _declared(demo)
        assert ours in [_declared(e) for e in siblings], f"{app_id}: {ours}"
        twins += ours is not None
    assert twins >= 5  # FLUX.2, its edit, FLUX.1 dev and schnell, Kontext, Wan A14B


def _declared(endpoint: Endpoint) -> tuple[Any, ...] | None:
    spec = endpoint.params.get("acceleration")
    return spec and (spec.cache, spec.default, spec.values)


@pytest.mark.parametrize("app_id", sorted(a for a, e in ENDPOINTS.items() if "acceleration" in e.params))
def test_none_is_the_graph_without_the_field_and_each_level_adds_its_cache(app_id: str) -> None:
    endpoint = ENDPOINTS[app_id]
    spec = endpoint.params["acceleration"]
    without = _graph(_without_acceleration(endpoint))
    assert _graph(endpoint, acceleration="none") == without
    assert spec.cache is not None
    for level in spec.honoured if spec.honoured is not None else spec.values or []:
        if level == acceleration.NONE:
            continue
        graph = _graph(endpoint, acceleration=level)
        added = {node: graph[node] for node in set(graph) - set(without)}
        assert len(added) == len(spec.to)
        for target in spec.to:
            node_id, _, name = target.partition(".")
            cache_id, output = graph[node_id]["inputs"][name]
            assert output == 0 and added[cache_id]["class_type"] == acceleration.CACHE_NODES[spec.cache]
            settings = dict(acceleration.LEVELS[level])
            if all(MANIFEST.get(m).source.generated for m in endpoint.models.values()):  # the demos' own
                settings["reuse_threshold"] = acceleration.RANDOM_WEIGHT_THRESHOLDS[level]
            assert added[cache_id]["inputs"] == {
                "model": without[node_id]["inputs"][name],
                **settings,
                "verbose": False,
            }
            graph[node_id]["inputs"][name] = without[node_id]["inputs"][name]
        assert {node: graph[node] for node in without} == without, (
            "a level changed more than the model inputs"
        )
    assert all(f"'{level}'" in spec.description for level in spec.values or [])  # served or refused


def test_levels_are_ordered_and_the_description_says_the_thresholds() -> None:
    regular, high = acceleration.LEVELS["regular"], acceleration.LEVELS["high"]
    assert (
        high["reuse_threshold"] > regular["reuse_threshold"]
        and high["start_percent"] <= regular["start_percent"]
    )
    text = acceleration.describe("lazy", ["none", "regular", "high"])
    assert "LazyCache" in text and "reuse_threshold 0.2" in text and "reuse_threshold 0.4" in text


def test_a_lazy_cache_family_gets_lazycache() -> None:
    endpoint = ENDPOINTS["darkroom/demo-flux-dev"]
    lazy = _with_acceleration(endpoint, cache="lazy")
    graph = _graph(lazy, acceleration="high")
    assert [n["class_type"] for n in graph.values() if n["class_type"].endswith("Cache")] == ["LazyCache"]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"cache": "quick"}, "should be 'easy' or 'lazy'"),
        ({"values": ["regular", "high"]}, "must include 'none'"),
        ({"values": ["none", "full"]}, "unknown: ['full']"),
        ({"to": ["11.noise"]}, "sampler inputs"),
    ],
)
def test_a_wrong_acceleration_declaration_fails_at_load(
    tmp_path: Path, override: dict[str, Any], says: str
) -> None:
    for name in ("flux-1.yaml", "flux1-t2i.json"):
        (tmp_path / name).write_text((WORKFLOWS_DIR / name).read_text())
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared/extensions.yaml").write_text((WORKFLOWS_DIR / "shared/extensions.yaml").read_text())
    raw = yaml.safe_load((tmp_path / "flux-1.yaml").read_text())
    raw["params"]["acceleration"].update(override)
    raw["endpoints"] = {"darkroom/demo-flux-dev": raw["endpoints"]["darkroom/demo-flux-dev"]}
    (tmp_path / "flux-1.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match=re.escape(says)):
        load_endpoints(tmp_path, MANIFEST)


def _without_acceleration(endpoint: Endpoint) -> Endpoint:
    params = {name: spec for name, spec in endpoint.params.items() if name != "acceleration"}
    return _rebuilt(endpoint, params)


def _with_acceleration(endpoint: Endpoint, **update: Any) -> Endpoint:
    params = dict(endpoint.params)
    params["acceleration"] = params["acceleration"].model_copy(update=update)
    return _rebuilt(endpoint, params)


def _rebuilt(endpoint: Endpoint, params: dict[str, Any]) -> Endpoint:
    from dataclasses import replace

    from server.workflows.request_schema import request_model

    return replace(
        endpoint,
        params=params,
        request_model=request_model("Rebuilt", params),
        workflow=copy.deepcopy(endpoint.workflow),
    )


def test_an_endpoint_opened_in_the_editor_keeps_its_default_level() -> None:
    """The marked workflow has no input node for the level (the editor has no such field): its graph is
    the endpoint's at its default, the cache node included, so a republished copy gives the same bytes."""
    from server.workflows.marked import marked_prompt

    for app_id, cached in (("darkroom/demo-flux-2", True), ("darkroom/demo-flux-dev", False)):
        endpoint = ENDPOINTS[app_id]
        prompt = marked_prompt(endpoint, MANIFEST)
        fields = {
            n["inputs"].get("field") for n in prompt.values() if n["class_type"].startswith("DarkroomInput")
        }
        assert "acceleration" not in fields and "prompt" in fields
        (target,) = endpoint.params["acceleration"].to
        node_id, _, name = target.partition(".")
        source = prompt[prompt[node_id]["inputs"][name][0]]
        assert (source["class_type"] == "EasyCache") == cached, app_id

"""A marked API-format workflow becomes an endpoint; every publishing mistake is a 422 naming the node."""

from __future__ import annotations

from typing import Any

import pytest

from server.engine.models import load_manifest
from server.errors import RequestValidationError
from server.workflows.published import endpoint_from_prompt
from tests.marked import marked_flux2, set_input

MANIFEST = load_manifest()


def node_types(prompt: dict[str, Any]) -> dict[str, Any]:
    """/object_info as a worker with the tiny models answers it, for the classes the prompt uses."""
    types: dict[str, Any] = {node["class_type"]: {"input": {"required": {}}} for node in prompt.values()}
    for class_type, name, model in [
        ("DarkroomFluxLoader", "model_name", "tiny-flux2-fp8-scaled"),
        ("DarkroomTextEncoderLoader", "text_encoder_name", "tiny-mistral3-flux2"),
        ("DarkroomVAELoader", "vae_name", "tiny-flux2-vae"),
    ]:
        types[class_type]["input"]["required"][name] = [
            "COMBO",
            {"options": [MANIFEST.get(model).folder_name]},
        ]
    types["KSamplerSelect"]["input"]["required"]["sampler_name"] = [["euler", "dpmpp_2m"], {}]
    return types


def publish(prompt: dict[str, Any], types: dict[str, Any] | None = None) -> Any:
    return endpoint_from_prompt(
        "me/art", prompt, node_types=node_types(prompt) if types is None else types, manifest=MANIFEST
    )


def test_input_nodes_become_the_request_fields() -> None:
    endpoint = publish(marked_flux2(MANIFEST))
    assert {name: spec.type for name, spec in endpoint.params.items()} == {
        "prompt": "string", "image_size": "image_size", "num_inference_steps": "integer", "seed": "seed",
        "guidance_scale": "number", "loras": "loras", "output_format": "enum", "sync_mode": "boolean",
    }  # fmt: skip
    assert endpoint.output.images == "13"
    schema = endpoint.request_model.model_json_schema()
    assert schema["required"] == ["prompt"]
    steps = schema["properties"]["num_inference_steps"]
    assert (steps["default"], steps["minimum"], steps["maximum"]) == (2, 1, 8)
    assert schema["properties"]["output_format"]["enum"] == ["png", "jpeg"]


def test_a_request_sets_the_input_nodes_values() -> None:
    endpoint = publish(marked_flux2(MANIFEST))
    request = endpoint.validate(
        {"prompt": "a red cube", "image_size": {"width": 90, "height": 40}, "seed": 5}
    )
    prompt, resolved = endpoint.build_prompt(request, MANIFEST)
    assert prompt["20"]["inputs"]["value"] == "a red cube"
    assert (prompt["21"]["inputs"]["width"], prompt["21"]["inputs"]["height"]) == (80, 32)  # multiple of 16
    assert prompt["23"]["inputs"]["value"] == 5 and prompt["22"]["inputs"]["value"] == 2
    assert prompt["4"]["inputs"]["text"] == ["20", 0], "links into the graph stay as the editor made them"
    defaults, _ = endpoint.build_prompt(endpoint.validate({"prompt": "x", "image_size": "square"}), MANIFEST)
    assert (defaults["21"]["inputs"]["width"], defaults["21"]["inputs"]["height"]) == (512, 512)
    random_seeds = {
        endpoint.build_prompt(endpoint.validate({"prompt": "x"}), MANIFEST)[1]["seed"] for _ in range(5)
    }
    assert len(random_seeds) > 1, "a request without a seed gets a random one"


@pytest.mark.parametrize(
    ("change", "node", "message"),
    [
        (
            lambda p: p.update({"30": {"class_type": "NoSuchNode", "inputs": {}}}),
            "30",
            "unknown node type 'NoSuchNode'",
        ),
        (
            lambda p: p["3"]["inputs"].update(vae_name=MANIFEST.get("flux2-vae").folder_name),
            "3",
            "fetch it with `darkroom models fetch flux2-vae",
        ),
        (lambda p: p["9"]["inputs"].update(sampler_name="nope"), "9", "'nope' is not offered here"),
        (lambda p: p["22"]["inputs"].update(field="prompt"), "22", "already set by node 20"),
        (lambda p: p["22"]["inputs"].update(field="sync_mode"), "22", "is reserved"),
        (lambda p: p["22"]["inputs"].update(field="fal_webhook"), "22", "is reserved"),
        (lambda p: p["22"]["inputs"].update(field="Steps!"), "22", "lower-case identifier"),
        (lambda p: p["22"]["inputs"].update(value=99), "22", "outside min 1 .. max 8"),
        (lambda p: p["22"]["inputs"].update(max=["20", 0]), "22", "must be a value in the node, not a link"),
        (lambda p: p["26"]["inputs"].update(value="gif"), "26", "not one of the choices"),
        (lambda p: p["25"]["inputs"].update(value="{not json"), "25", "not a JSON list of LoRAs"),
        (lambda p: p.pop("13"), None, "no output node"),
        (lambda p: p.update({"31": {**p["13"]}}), "31", "several output nodes (13, 31)"),
    ],
)
def test_mistakes_are_422s_naming_the_node(change: Any, node: str | None, message: str) -> None:
    prompt = marked_flux2(MANIFEST)
    types = node_types(prompt)
    change(prompt)
    with pytest.raises(RequestValidationError) as caught:
        publish(prompt, types)
    assert caught.value.status == 422
    matching = [e for e in caught.value.errors if message in e["msg"]]
    assert matching, caught.value.errors
    assert node is None or any(node in e["loc"] for e in matching), matching


def test_a_prompt_of_the_wrong_shape_is_a_422() -> None:
    for bad in ([], {}, {"1": {"inputs": {}}}, {"1": {"class_type": "X", "inputs": []}}):
        with pytest.raises(RequestValidationError):
            publish(bad, {})  # type: ignore[arg-type]


def test_without_node_types_only_the_marking_is_checked() -> None:
    prompt = set_input(marked_flux2(MANIFEST), "9", "sampler_name", "anything")
    endpoint = endpoint_from_prompt("me/art", prompt, node_types=None, manifest=MANIFEST)
    assert "prompt" in endpoint.params

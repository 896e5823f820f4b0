"""Workflow mappings: request validation, prompt building, and load-time checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.engine.models import load_manifest
from server.errors import NotFoundError, RequestValidationError
from server.settings import PROJECT_ROOT
from server.workflows.mapping import ImageInput, MappingError, load_endpoints
from server.workflows.request_schema import IMAGE_SIZE_PRESETS
from server.workflows.validation import find_endpoint, validate_input, validation_error

WORKFLOWS = PROJECT_ROOT / "workflows"


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.fixture(scope="module")
def endpoints(manifest):
    return load_endpoints(WORKFLOWS, manifest)


def test_flux2_endpoints_are_declared(endpoints):
    assert {"fal-ai/flux-2", "darkroom/demo-flux-2"} <= set(endpoints)


def test_defaults_follow_fal_schema(endpoints, manifest):
    endpoint = endpoints["fal-ai/flux-2"]
    prompt, resolved = endpoint.build_prompt(endpoint.validate({"prompt": "a cat"}), manifest)
    assert resolved["image_size"] == {"width": 1024, "height": 768}  # landscape_4_3
    assert prompt["7"]["inputs"]["steps"] == 28
    assert prompt["5"]["inputs"]["guidance"] == 2.5
    assert prompt["13"]["inputs"]["format"] == "png"
    assert prompt["4"]["inputs"]["text"] == "a cat"
    assert prompt["1"]["inputs"]["model_name"] == "flux2_dev_fp8mixed.safetensors"


def test_every_preset_sets_latent_and_scheduler(endpoints, manifest):
    endpoint = endpoints["fal-ai/flux-2"]
    for preset, (width, height) in IMAGE_SIZE_PRESETS.items():
        prompt, _ = endpoint.build_prompt(endpoint.validate({"prompt": "x", "image_size": preset}), manifest)
        assert (prompt["6"]["inputs"]["width"], prompt["6"]["inputs"]["height"]) == (width, height)
        assert (prompt["7"]["inputs"]["width"], prompt["7"]["inputs"]["height"]) == (width, height)


def test_custom_size_rounds_down_to_multiple_of_16(endpoints, manifest):
    endpoint = endpoints["fal-ai/flux-2"]
    _, resolved = endpoint.build_prompt(
        endpoint.validate({"prompt": "x", "image_size": {"width": 1000, "height": 777}}), manifest
    )
    assert resolved["image_size"] == {"width": 992, "height": 768}


def test_seed_is_random_when_absent_and_kept_when_given(endpoints, manifest):
    endpoint = endpoints["darkroom/demo-flux-2"]
    seeds = {endpoint.build_prompt(endpoint.validate({"prompt": "x"}), manifest)[1]["seed"] for _ in range(5)}
    assert len(seeds) > 1
    prompt, resolved = endpoint.build_prompt(endpoint.validate({"prompt": "x", "seed": 42}), manifest)
    assert resolved["seed"] == 42 and prompt["8"]["inputs"]["noise_seed"] == 42


def test_demo_twin_binds_tiny_models_and_small_defaults(endpoints, manifest):
    endpoint = endpoints["darkroom/demo-flux-2"]
    prompt, resolved = endpoint.build_prompt(endpoint.validate({"prompt": "x"}), manifest)
    assert resolved["image_size"] == {"width": 64, "height": 64}
    assert prompt["7"]["inputs"]["steps"] == 4
    assert prompt["1"]["inputs"]["model_name"].startswith("tiny/")


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({}, ["body", "prompt"], "missing"),
        ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
        ({"prompt": "x", "num_inference_steps": 99}, ["body", "num_inference_steps"], "less_than_equal"),
        (
            {"prompt": "x", "image_size": {"width": 100, "height": 600}},
            ["body", "image_size", "width"],
            "greater_than_equal",
        ),
        ({"prompt": "x", "image_size": "huge"}, ["body", "image_size"], "literal_error"),
        ({"prompt": "x", "output_format": "gif"}, ["body", "output_format"], "literal_error"),
        ({"prompt": "x", "seed": -1}, ["body", "seed"], "greater_than_equal"),
    ],
)
def test_bad_input_detail_names_field_and_allowed_range(endpoints, body, loc, kind):
    with pytest.raises(ValidationError) as caught:
        endpoints["fal-ai/flux-2"].validate(body)
    detail = validation_error(caught.value).detail
    assert len(detail) == 1, detail
    assert detail[0]["loc"] == loc and detail[0]["type"] == kind
    json.dumps(detail)  # must be serialisable as a response body


def test_range_error_carries_the_limit(endpoints):
    with pytest.raises(ValidationError) as caught:
        endpoints["fal-ai/flux-2"].validate({"prompt": "x", "num_inference_steps": 99})
    (item,) = validation_error(caught.value).detail
    assert item["ctx"] == {"le": 50} and item["input"] == 99 and "50" in item["msg"]


def test_find_endpoint_accepts_subpaths_and_names_the_available(endpoints):
    assert find_endpoint(endpoints, "fal-ai/flux-2").app_id == "fal-ai/flux-2"
    assert find_endpoint(endpoints, "/darkroom/demo-flux-2/stream").app_id == "darkroom/demo-flux-2"
    with pytest.raises(NotFoundError, match="fal-ai/flux-2"):
        find_endpoint(endpoints, "fal-ai/flux-3")


def _write_mapping(tmp_path: Path, text: str) -> Path:
    (tmp_path / "flux2-t2i.json").write_text((WORKFLOWS / "flux2-t2i.json").read_text())
    (tmp_path / "shared").mkdir(exist_ok=True)
    (tmp_path / "shared" / "extensions.yaml").write_text(
        (WORKFLOWS / "shared" / "extensions.yaml").read_text()
    )
    (tmp_path / "m.yaml").write_text(text)
    return tmp_path


def test_mapping_that_targets_a_missing_input_fails_at_load(tmp_path, manifest):
    text = (WORKFLOWS / "flux-2.yaml").read_text().replace('"7.steps"', '"7.stepz"')
    with pytest.raises(MappingError, match="7.stepz"):
        load_endpoints(_write_mapping(tmp_path, text), manifest)


@pytest.mark.parametrize(("removes", "match"), [('["3.vae_nam"]', "3.vae_nam"), ('["99"]', "absent_removes")])
def test_absent_removes_naming_what_the_workflow_lacks_fails_at_load(tmp_path, manifest, removes, match):
    text = (WORKFLOWS / "flux-2.yaml").read_text()
    text = text.replace(
        'vae: {shared: vae, to: ["3.vae_name"]',
        f'vae: {{shared: vae, to: ["3.vae_name"], absent_removes: {removes}',
    )
    with pytest.raises(MappingError, match=match):
        load_endpoints(_write_mapping(tmp_path, text), manifest)


def test_mapping_that_names_an_unknown_model_fails_at_load(tmp_path, manifest):
    text = (WORKFLOWS / "flux-2.yaml").read_text().replace("flux2-dev-fp8mixed", "flux2-nope")
    with pytest.raises(MappingError, match="flux2-nope"):
        load_endpoints(_write_mapping(tmp_path, text), manifest)


def test_a14b_experts_hand_over_halfway_and_share_the_seed(endpoints, manifest):
    endpoint = endpoints["fal-ai/wan/v2.2-a14b/text-to-video"]
    prompt, _ = endpoint.build_prompt(
        endpoint.validate({"prompt": "x", "seed": 9, "num_inference_steps": 27}), manifest
    )
    high, low, schedule = prompt["10"]["inputs"], prompt["11"]["inputs"], prompt["16"]["inputs"]
    assert (schedule["steps"], schedule["handover"]) == (27, 0.5)  # DarkroomKSamplerSigmas splits it
    assert (high["sigmas"], low["sigmas"]) == (["16", 1], ["16", 2])
    assert high["noise_seed"] == low["noise_seed"] == 9


def test_an_absent_optional_image_drops_its_link_and_loader(endpoints, manifest):
    endpoint = endpoints["fal-ai/wan/v2.2-a14b/image-to-video"]
    images = {"image_url": ImageInput("start.png", 640, 480)}
    body = {"prompt": "x", "image_url": "https://example.com/a.png"}
    prompt, _ = endpoint.build_prompt(endpoint.validate(body), manifest, images)
    assert "17" not in prompt and "end_image" not in prompt["7"]["inputs"]
    assert (
        prompt["7"]["inputs"]["start_image"] == ["14", 0] and prompt["14"]["inputs"]["image"] == "start.png"
    )
    images["end_image_url"] = ImageInput("end.png", 640, 480)
    body["end_image_url"] = "https://example.com/b.png"
    prompt, _ = endpoint.build_prompt(endpoint.validate(body), manifest, images)
    assert prompt["7"]["inputs"]["end_image"] == ["17", 0] and prompt["17"]["inputs"]["image"] == "end.png"


@pytest.mark.parametrize(
    ("resolution", "aspect_ratio", "size"),
    [("720p", "16:9", (1280, 720)), ("480p", "9:16", (480, 832)), ("580p", "1:1", (768, 768))],
)
def test_resolution_and_aspect_ratio_pick_the_frame_size(endpoints, manifest, resolution, aspect_ratio, size):
    endpoint = endpoints["fal-ai/wan/v2.2-a14b/text-to-video"]
    body = {"prompt": "x", "resolution": resolution, "aspect_ratio": aspect_ratio}
    prompt, _ = endpoint.build_prompt(endpoint.validate(body), manifest)
    assert (prompt["7"]["inputs"]["width"], prompt["7"]["inputs"]["height"]) == size


def test_schnell_fixes_a_constant_shift(endpoints, manifest):
    endpoint = endpoints["fal-ai/flux/schnell"]
    prompt, resolved = endpoint.build_prompt(endpoint.validate({"prompt": "x"}), manifest)
    assert prompt["7"]["inputs"]["max_shift"] == prompt["7"]["inputs"]["base_shift"] == 1.0
    assert resolved["num_inference_steps"] == 4
    with pytest.raises(ValidationError):
        endpoint.validate({"prompt": "x", "num_inference_steps": 28})


def test_video_endpoints_answer_a_video(endpoints):
    assert endpoints["fal-ai/wan/v2.2-5b/text-to-video"].output.kind == "video"
    assert endpoints["fal-ai/flux/dev"].output.kind == "images"


def test_a_lookup_missing_a_combination_fails_at_load(tmp_path, manifest):
    (tmp_path / "wan22-a14b-t2v.json").write_text((WORKFLOWS / "wan22-a14b-t2v.json").read_text())
    text = (
        (WORKFLOWS / "wan-2.2-a14b.yaml")
        .read_text()
        .replace('      "480p 1:1": {width: 624, height: 624}\n', "")
    )
    with pytest.raises(MappingError, match="480p 1:1"):
        load_endpoints(_write_mapping(tmp_path, text), manifest)


def test_the_cpu_demos_say_why_their_bounds_are_small(endpoints) -> None:
    with pytest.raises(RequestValidationError) as demo:
        validate_input(
            endpoints["darkroom/demo-flux-2"], {"prompt": "x", "num_images": 3, "num_inference_steps": 13}
        )
    messages = [e["msg"] for e in demo.value.errors]
    assert len(messages) == 2 and all("darkroom/demo-flux-2: a CPU demo: at most" in m for m in messages), (
        messages
    )
    with pytest.raises(RequestValidationError) as real:
        validate_input(endpoints["fal-ai/flux-2"], {"prompt": "x", "num_images": 5})
    assert real.value.errors[0]["msg"] == "Input should be less than or equal to 4", (
        "only the demos add a note"
    )
    for app_id in ("darkroom/demo-flux-2", "darkroom/demo-flux-dev", "darkroom/demo-flux-schnell"):
        params = endpoints[app_id].params
        assert (params["num_inference_steps"].le, params["num_images"].le, params["image_size"].le) == (
            12,
            2,
            512,
        )


def test_model_key_names_the_files_a_worker_keeps_loaded(endpoints):
    t2i, lora, demo = (endpoints[a] for a in ("fal-ai/flux-2", "fal-ai/flux-2/lora", "darkroom/demo-flux-2"))
    key = t2i.model_key(t2i.validate({"prompt": "a cat"}))
    assert key == "flux2-dev-fp8mixed+flux2-vae+mistral3-small-flux2-fp8"
    body = {"prompt": "a cat", "loras": [{"path": "style.safetensors", "scale": 0.5}]}
    assert lora.model_key(lora.validate(body)) == key  # same files (a LoRA patches the loaded model)
    assert demo.model_key(demo.validate({"prompt": "a cat"})) != key
    vae = t2i.model_key(t2i.validate({"prompt": "a cat", "vae": "other-vae.safetensors"}))
    assert vae == f'{key} {{"vae": "other-vae.safetensors"}}'


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((1000, 600), (992, 592)),  # inside the bounds: as it is, sides rounded down to 16
        ((4096, 1024), (2048, 512)),  # longer side brought down to 2048, aspect kept
        ((300, 200), (768, 512)),  # shorter side brought up to 512
        ((100, 3000), (512, 2048)),  # cannot keep both: each side clamped
    ],
)
def test_an_edit_without_image_size_takes_the_first_images_size_fitted(
    endpoints, manifest, size, fitted
) -> None:
    endpoint = endpoints["fal-ai/flux-2/edit"]
    request = endpoint.validate(
        {"prompt": "x", "image_urls": ["https://a.example/1.png", "https://a.example/2.png"]}
    )
    images = [ImageInput("first.png", *size), ImageInput("second.png", 64, 64)]
    prompt, resolved = endpoint.build_prompt(request, manifest, {"image_urls": images})
    assert (resolved["image_size"]["width"], resolved["image_size"]["height"]) == fitted
    assert json.loads(prompt["18"]["inputs"]["images"]) == ["first.png", "second.png"]
    given = endpoint.validate(
        {"prompt": "x", "image_urls": ["https://a.example/1.png"], "image_size": "square"}
    )
    _, resolved = endpoint.build_prompt(given, manifest, {"image_urls": images[:1]})
    assert resolved["image_size"] == {"width": 512, "height": 512}


def test_a_shared_block_is_the_params_start_and_its_own_keys_override(tmp_path, manifest) -> None:
    mapping = (WORKFLOWS / "flux-2.yaml").read_text()
    text = mapping.replace("denoise: {shared: denoise,", "denoise: {shared: denoise, le: 0.5,")
    endpoint = load_endpoints(_write_mapping(tmp_path, text), manifest)["fal-ai/flux-2"]
    denoise, sampler = endpoint.params["denoise"], endpoint.params["sampler"]
    assert (denoise.type, denoise.advanced, denoise.ge, denoise.le) == ("number", True, 0.01, 0.5)
    assert (sampler.type, sampler.default, sampler.to) == ("sampler", "default", ["17.sampler_name"])
    with pytest.raises(MappingError, match="no shared block 'nothing'"):
        load_endpoints(
            _write_mapping(tmp_path, mapping.replace("{shared: denoise,", "{shared: nothing,")), manifest
        )


def test_every_endpoint_opens_as_a_marked_workflow(endpoints, manifest) -> None:
    """The editor's "Open a darkroom endpoint" builds each endpoint's graph at its defaults; a required
    image (a URL the request model checks) stands in for the graph's own, which stays."""
    from server.workflows.marked import marked_prompt

    for app_id, endpoint in endpoints.items():
        prompt = marked_prompt(endpoint, manifest)
        fields = {
            n["inputs"]["field"] for n in prompt.values() if n["class_type"].startswith("DarkroomInput")
        }
        assert "prompt" in fields or "image_url" in endpoint.params or endpoint.output.kind == "lora", app_id
        for name in [n for n in endpoint.params_of("image_url") if endpoint.params[n].required]:
            (target,) = endpoint.params[name].to
            loads = endpoint.workflow[target.split(".")[0]]["class_type"] == "LoadImage"
            assert (name in fields) == loads, f"{app_id}: {name}"


def test_z_image_i2i_auto_is_the_inputs_size_and_strength_and_denoise_multiply(endpoints, manifest) -> None:
    endpoint = endpoints["fal-ai/z-image/turbo/image-to-image"]
    image = {"image_url": ImageInput("in.png", 900, 600)}
    for body in ({}, {"image_size": "auto"}):  # fal's default, left out or sent
        request = endpoint.validate({"prompt": "x", "image_url": "https://a.example/1.png", **body})
        prompt, resolved = endpoint.build_prompt(request, manifest, image)
        assert (
            resolved["image_size"]
            == {"width": 896, "height": 592}
            == {side: prompt["20"]["inputs"][side] for side in ("width", "height")}
        )
    assert (prompt["17"]["inputs"]["denoise"], prompt["8"]["inputs"]["denoise"]) == (0.6, 1)
    assert prompt["19"]["inputs"]["image"] == "in.png"
    sized = endpoint.validate(
        {"prompt": "x", "image_url": "https://a.example/1.png", "image_size": "square", "denoise": 0.5}
    )
    prompt, resolved = endpoint.build_prompt(sized, manifest, image)
    assert resolved["image_size"] == {"width": 512, "height": 512} and prompt["8"]["inputs"]["denoise"] == 0.5
    with pytest.raises(ValidationError):  # "auto" is an extra name of this image_size only
        endpoints["fal-ai/z-image/turbo"].validate({"prompt": "x", "image_size": "auto"})


def test_an_image_size_extra_name_needs_size_from(tmp_path, manifest) -> None:
    mapping = (WORKFLOWS / "z-image-turbo.yaml").read_text()
    text = mapping.replace("    default: landscape_4_3\n", "    default: landscape_4_3\n    values: [auto]\n")
    folder = _write_mapping(tmp_path, text)
    (folder / "zimage-t2i.json").write_text((WORKFLOWS / "zimage-t2i.json").read_text())
    with pytest.raises(MappingError, match="one extra name is 'auto', with size_from"):
        load_endpoints(folder, manifest)

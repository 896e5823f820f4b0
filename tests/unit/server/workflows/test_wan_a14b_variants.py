"""Wan 2.2 A14B's further endpoints as mapping variants: each request field reaches its node input
(video-to-video's input, strength and rate; text-to-image's size and image output; the LoRA endpoints'
fal-style entries and reverse_video; the encoder's two fields), and fal's names for a LoRA's expert and
file become darkroom's."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.engine.models import Manifest, load_manifest
from server.errors import InputError
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, MediaInput, load_endpoints
from server.workflows.request_schema import LoraEntry

HF_REPO = "https://huggingface.co/o/r"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest()


@pytest.fixture(scope="module")
def endpoints(manifest: Manifest) -> dict[str, Endpoint]:
    return load_endpoints(WORKFLOWS_DIR, manifest)


def build(endpoint: Endpoint, manifest: Manifest, body: dict[str, Any], **prepared: Any) -> dict[str, Any]:
    prompt, _ = endpoint.build_prompt(endpoint.validate({"prompt": "x", **body}), manifest, prepared)
    return prompt


@pytest.mark.parametrize(("width", "height", "size"), [(80, 64, (64, 64)), (48, 80, (64, 96))])
def test_video_to_video_wires_the_input_strength_and_rate(
    endpoints: dict[str, Endpoint], manifest: Manifest, width: int, height: int, size: tuple[int, int]
) -> None:
    endpoint = endpoints["darkroom/demo-wan-2.2-a14b-v2v"]
    clip = MediaInput("darkroom/r-video_url.mp4", 3.0, 36, 12.0, width, height)
    body = {"video_url": "https://example.com/a.mp4", "strength": 0.3, "frames_per_second": 12}
    prompt = build(endpoint, manifest, {**body, "resample_fps": True}, video_url=clip)
    load = prompt["30"]["inputs"]
    assert (load["video"], load["frames"], load["fps"], load["resample"]) == (clip.name, 5, 12, True)
    assert prompt["16"]["inputs"]["denoise"] == 0.3 and prompt["13"]["inputs"]["fps"] == 12
    # aspect_ratio auto: the ratio nearest the input video's, then the demo's 64p size for it
    assert (prompt["7"]["inputs"]["width"], prompt["7"]["inputs"]["height"]) == size
    assert prompt["10"]["inputs"]["latent_image"] == ["32", 0] and prompt["32"]["class_type"] == "VAEEncode"
    assert "denoise" not in endpoint.params and "reverse_video" not in endpoint.params


def test_text_to_image_is_one_frame_saved_as_an_image(
    endpoints: dict[str, Endpoint], manifest: Manifest
) -> None:
    endpoint = endpoints["fal-ai/wan/v2.2-a14b/text-to-image"]
    prompt = build(endpoint, manifest, {"image_size": "landscape_4_3", "enable_output_safety_checker": True})
    assert prompt["7"]["inputs"] | {"batch_size": 1} == {
        "width": 1024,
        "height": 768,
        "length": 1,
        "batch_size": 1,
    }
    assert prompt["13"]["class_type"] == "DarkroomSaveImage" and endpoint.output.kind == "image"
    assert any(node["class_type"] == "DarkroomSafetyChecker" for node in prompt.values())
    assert prompt["8"]["inputs"]["shift"] == 2  # fal's default here (5 on its videos)
    assert not {"num_frames", "frames_per_second", "video_quality", "reverse_video"} & set(endpoint.params)


def test_lora_endpoints_take_fals_entries_and_reverse_video(
    endpoints: dict[str, Endpoint], manifest: Manifest
) -> None:
    endpoint = endpoints["fal-ai/wan/v2.2-a14b/text-to-video/lora"]
    body = {"loras": [{"path": "a.safetensors", "transformer": "high", "scale": 2}], "reverse_video": True}
    request = endpoint.validate({"prompt": "x", **body})
    assert request.loras[0].model_dump() == {  # type: ignore[attr-defined]
        "path": "a.safetensors", "scale": 2.0, "text_encoder_scale": None, "expert": "high", "sha256": None,
    }  # fmt: skip
    prompt = build(
        endpoint, manifest, {"reverse_video": True, "video_quality": "low", "video_write_mode": "small"}
    )
    assert {k: prompt["13"]["inputs"][k] for k in ("reverse", "video_quality", "video_write_mode")} == {
        "reverse": True, "video_quality": "low", "video_write_mode": "small",
    }  # fmt: skip
    assert (
        not endpoint.params["loras"].advanced
        and endpoints["fal-ai/wan/v2.2-a14b/text-to-video"].params["loras"].advanced
    )
    assert endpoints["fal-ai/wan/v2.2-a14b/image-to-video/lora"].params["guidance_scale_2"].default == 4
    plain = build(endpoints["fal-ai/wan/v2.2-a14b/text-to-video"], manifest, {})["13"]["inputs"]
    assert (plain["reverse"], plain["video_quality"], plain["video_write_mode"]) == (
        False,
        "high",
        "balanced",
    )


@pytest.mark.parametrize(
    ("entry", "path", "expert"),
    [
        ({"path": "owner/repo", "weight_name": "w.safetensors"}, "hf://owner/repo/w.safetensors", "both"),
        ({"path": HF_REPO, "weight_name": "w.bin", "transformer": "low"}, "hf://o/r/w.bin", "low"),
        ({"path": "a.safetensors", "transformer": "both", "expert": "both"}, "a.safetensors", "both"),
    ],
)  # fmt: skip
def test_fals_lora_names_become_darkrooms(entry: dict[str, Any], path: str, expert: str) -> None:
    parsed = LoraEntry.model_validate(entry)
    assert (parsed.path, parsed.expert) == (path, expert)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "a.safetensors", "transformer": "high", "expert": "low"}, "disagree"),
        ({"path": "https://example.com/a", "weight_name": "w.safetensors"}, "path must be owner/repo"),
        ({"path": "owner/repo", "weight_name": "../w.safetensors"}, "path must be owner/repo"),
        ({"path": "a.safetensors", "transformer": "middle"}, "transformer"),
    ],
)
def test_contradictory_or_unusable_lora_entries_are_refused(entry: dict[str, Any], message: str) -> None:
    # what a schema can say is a validation error; what it cannot (fields that must agree) an InputError
    expected = ValidationError if message == "transformer" else InputError
    with pytest.raises(expected, match=message):
        LoraEntry.model_validate(entry)


@pytest.mark.parametrize(
    "app_id",
    [
        "fal-ai/wan/v2.2-a14b/video-to-video",
        "fal-ai/wan/v2.2-a14b/text-to-video/lora",
        "fal-ai/wan/v2.2-5b/text-to-video",
    ],
)
def test_interpolation_and_prompt_expansion_are_refused_saying_why(
    endpoints: dict[str, Endpoint], app_id: str
) -> None:
    endpoint = endpoints[app_id]
    body = {"prompt": "x", "video_url": "https://example.com/a.mp4"}
    endpoint.validate({**body, "num_interpolated_frames": 0, "interpolator_model": "rife"})  # off: accepted
    with pytest.raises(ValidationError, match="num_interpolated_frames[\\s\\S]*third-party ComfyUI nodes"):
        endpoint.validate({**body, "num_interpolated_frames": 2})
    with pytest.raises(ValidationError, match="enable_prompt_expansion[\\s\\S]*language model"):
        endpoint.validate({**body, "enable_prompt_expansion": True})

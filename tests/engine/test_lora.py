"""LoRA stacks in-process on the tiny models: every LoRA changes the prediction, scale 0 is no LoRA, order
does not matter, kohya / diffusers renderings equal the ComfyUI-format file (FLUX.2 included), a LoRA for
another base model fails by name, and Wan A14B entries reach only their expert."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.sd
import comfy.utils
import pytest
import torch
from darkroom.formats import arch
from darkroom.formats.checkpoint import save_state_dict
from darkroom.formats.lora_keys import LoraFormat
from darkroom.nodes import extras as nodes_extras
from darkroom.ops import diffusion, encoders, lora
from darkroom.tiny import diffusion as tiny

Stack = nodes_extras.DarkroomLoraStack
FLUX, WAN, SD3 = arch.Family.FLUX, arch.Family.WAN, arch.Family.SD3
# LoRA stem: (model file, family, latent shape, context width)
CASES = {
    "flux2": ("flux2-fp8_scaled", FLUX, (1, 128, 4, 4), 192),
    "flux1": ("flux1-bf16", FLUX, (1, 16, 8, 8), 64),
    "wan22-5b": ("wan22-ti2v-5b-bf16", WAN, (1, 48, 2, 8, 8), 64),
    "wan-a14b": ("wan22-a14b-high-bf16", WAN, (1, 16, 2, 8, 8), 64),
    "sd35": ("sd35-bf16", SD3, (1, 16, 8, 8), 4096),
}


@pytest.fixture(scope="module")
def models(models_dir: Path) -> dict[str, Any]:
    """One loaded model per LoRA stem (loading is the slow part; LoRA nodes clone, never modify)."""
    return {
        stem: diffusion.load_diffusion_model(models_dir / f"diffusion_models/tiny/{name}.safetensors", family)
        for stem, (name, family, _, _) in CASES.items()
    }


def eps(patcher: Any, stem: str) -> torch.Tensor:
    """The raw prediction at sigma 0.7 with the patcher's LoRA patches applied."""
    _, family, shape, ctx = CASES[stem]
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen)
    kwargs: dict[str, Any] = {"c_crossattn": torch.randn(1, 16, ctx, generator=gen)}
    if family is FLUX:
        kwargs["guidance"] = torch.tensor([3.5])
    if stem in ("flux1", "sd35"):
        kwargs["y"] = torch.randn(1, 64 if stem == "flux1" else 128, generator=gen)
    comfy.model_management.load_models_gpu([patcher])
    with torch.no_grad():
        return (x - patcher.model.apply_model(x, torch.tensor([0.7]), **kwargs)) / 0.7


def stack(model: Any, entries: list[dict[str, Any]], expert: str = "both", clip: Any = None) -> Any:
    out = Stack.execute(model=model, loras=json.dumps(entries), expert=expert, max_loras=8, clip=clip)
    return out.args[0] if clip is None else out.args


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("stem", CASES)
def test_each_lora_changes_the_output_and_scale_zero_is_no_lora(models: dict[str, Any], stem: str) -> None:
    base = models[stem]
    plain = eps(base, stem)
    for letter in "ab":
        patched = stack(base, [{"path": f"tiny/{stem}-lora-{letter}.safetensors", "scale": 1.0}])
        assert patched is not base and rel(eps(patched, stem), plain) > 0.05, letter
    off = stack(base, [{"path": f"tiny/{stem}-lora-a.safetensors", "scale": 0}])
    assert off is base and torch.equal(eps(off, stem), plain)
    assert stack(base, []) is base


@pytest.mark.parametrize("stem", ["flux2", "wan22-5b"])
def test_three_stacked_loras_give_the_same_output_in_any_order(models: dict[str, Any], stem: str) -> None:
    entries = [
        {"path": f"tiny/{stem}-lora-a.safetensors", "scale": 0.7},
        {"path": f"tiny/{stem}-lora-b.safetensors", "scale": 1.2},
        {"path": f"tiny/{stem}-lora-a-diffusers.safetensors", "scale": -0.4},
    ]
    forward = eps(stack(models[stem], entries), stem)
    backward = eps(stack(models[stem], entries[::-1]), stem)
    assert rel(forward, eps(models[stem], stem)) > 0.05
    assert torch.allclose(forward, backward, rtol=1e-3, atol=1e-3), rel(forward, backward)


@pytest.mark.parametrize("stem", ["flux2", "flux1", "wan22-5b"])
def test_kohya_and_diffusers_renderings_equal_the_comfyui_file(models: dict[str, Any], stem: str) -> None:
    reference = eps(stack(models[stem], [{"path": f"tiny/{stem}-lora-a.safetensors"}]), stem)
    for fmt in ("kohya", "diffusers"):
        got = eps(stack(models[stem], [{"path": f"tiny/{stem}-lora-a-{fmt}.safetensors"}]), stem)
        assert torch.equal(got, reference), fmt


def test_sd3_diffusers_lora_equals_the_comfyui_file_and_comfyuis_own_key_map(
    models: dict[str, Any], models_dir: Path
) -> None:
    """fal's SD 3.5 LoRAs are diffusers files: our names (split q/k/v, the last block's swapped
    modulation) give what the ComfyUI-format file gives, and what ComfyUI's own SD3 map gives."""
    path = models_dir / "loras/tiny/sd35-lora-a-diffusers-test.safetensors"
    save_state_dict(path, tiny.lora_rendering("sd35", "a", LoraFormat.DIFFUSERS))
    reference = eps(stack(models["sd35"], [{"path": "tiny/sd35-lora-a.safetensors"}]), "sd35")
    ours = stack(models["sd35"], [{"path": path.relative_to(models_dir / "loras").as_posix()}])
    assert torch.equal(eps(ours, "sd35"), reference)
    stock, _ = comfy.sd.load_lora_for_models(
        models["sd35"], None, comfy.utils.load_torch_file(str(path)), 1, 0
    )
    assert len(stock.patches) == len(ours.patches)
    assert torch.allclose(eps(stock, "sd35"), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_flux1_renderings_agree_with_comfyuis_own_key_maps(
    models: dict[str, Any], models_dir: Path, fmt: str
) -> None:
    """ComfyUI maps FLUX.1 kohya and diffusers names itself: an independent check of our tables."""
    path = models_dir / f"loras/tiny/flux1-lora-a-{fmt}.safetensors"
    stock, _ = comfy.sd.load_lora_for_models(
        models["flux1"], None, comfy.utils.load_torch_file(str(path)), 1.0, 0
    )
    ours = stack(models["flux1"], [{"path": f"tiny/flux1-lora-a-{fmt}.safetensors"}])
    assert len(stock.patches) == len(ours.patches)
    assert torch.allclose(eps(stock, "flux1"), eps(ours, "flux1"), rtol=1e-4, atol=1e-4)


def test_a_lora_for_another_base_model_fails_by_name(models: dict[str, Any]) -> None:
    with pytest.raises(lora.LoraMismatchError) as err:
        stack(models["flux2"], [{"path": "tiny/wan22-5b-lora-a.safetensors"}])
    message = str(err.value)
    assert "wan22-5b-lora-a.safetensors: none of its 60 tensors match the FLUX.2 diffusion model" in message
    assert (
        "(made for another base model? Its layer names look like Wan, e.g. 'diffusion_model.blocks" in message
    )
    with pytest.raises(lora.LoraMismatchError, match="match the Wan diffusion model"):
        stack(models["wan22-5b"], [{"path": "tiny/flux2-lora-a.safetensors"}])


def test_a_partial_match_is_applied_and_logged(
    models: dict[str, Any], models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sd = comfy.utils.load_torch_file(str(models_dir / "loras/tiny/flux2-lora-a.safetensors"))
    sd["diffusion_model.no_such_layer.lora_up.weight"] = torch.ones(4, 4)
    comfy.utils.save_torch_file(sd, str(models_dir / "loras/tiny/flux2-partial.safetensors"))
    with caplog.at_level(logging.WARNING, logger="darkroom.ops.lora"):
        patched = stack(models["flux2"], [{"path": "tiny/flux2-partial.safetensors"}])
    assert "30 of 31 keys match the FLUX.2 model, 1 do not" in caplog.text
    reference = stack(models["flux2"], [{"path": "tiny/flux2-lora-a.safetensors"}])
    assert torch.equal(eps(patched, "flux2"), eps(reference, "flux2"))


def test_a14b_entries_reach_only_their_expert(models: dict[str, Any]) -> None:
    a, b = "tiny/wan-a14b-lora-a.safetensors", "tiny/wan-a14b-lora-b.safetensors"
    entries = [{"path": a, "expert": "high"}, {"path": b, "expert": "low", "scale": 0.8}]
    high = eps(stack(models["wan-a14b"], entries, expert="high"), "wan-a14b")
    assert torch.equal(high, eps(stack(models["wan-a14b"], [{"path": a}]), "wan-a14b"))
    low = eps(stack(models["wan-a14b"], entries, expert="low"), "wan-a14b")
    assert torch.equal(low, eps(stack(models["wan-a14b"], [{"path": b, "scale": 0.8}]), "wan-a14b"))


def test_paths_stay_inside_the_loras_folder(models_dir: Path) -> None:
    cache = models_dir / "loras" / "cache"
    cache.mkdir(exist_ok=True)
    shutil.copy(models_dir / "loras/tiny/flux2-lora-b.safetensors", cache / "abc123.safetensors")
    ok = '[{"path": "cache/abc123.safetensors"}, {"path": "tiny/flux2-lora-a.safetensors"}]'
    assert Stack.validate_inputs(loras=ok, max_loras=8) is True
    assert "at most 1 are allowed" in Stack.validate_inputs(loras=ok, max_loras=1)
    assert "max_loras must be 1 to 64" in Stack.validate_inputs(loras=ok, max_loras=65)
    for bad in ["../diffusion_models/tiny/flux2-bf16.safetensors", str(cache / "abc123.safetensors")]:
        assert "not a plain relative file name" in Stack.validate_inputs(loras=json.dumps([{"path": bad}]))
    missing = Stack.validate_inputs(loras='[{"path": "nope.safetensors"}]')
    assert "'nope.safetensors' is not in models/loras" in missing
    schema = Stack.define_schema()
    assert all(i.tooltip for i in schema.inputs) and [o.io_type for o in schema.outputs] == ["MODEL", "CLIP"]


def test_text_encoder_layers_follow_text_encoder_scale(models: dict[str, Any], models_dir: Path) -> None:
    clip = encoders.load_text_encoder([models_dir / "text_encoders/tiny/umt5xxl.safetensors"], "wan")
    key = next(k for k in clip.cond_stage_model.state_dict() if k.endswith("SelfAttention.q.weight"))
    rows, cols = clip.cond_stage_model.state_dict()[key].shape
    te_lora = {
        f"text_encoders.{key[: -len('.weight')]}.lora_up.weight": torch.ones(rows, 1),
        f"text_encoders.{key[: -len('.weight')]}.lora_down.weight": torch.ones(1, cols),
    }
    comfy.utils.save_torch_file(te_lora, str(models_dir / "loras/tiny/umt5-te.safetensors"))
    entry = {"path": "tiny/umt5-te.safetensors", "scale": 1.0, "text_encoder_scale": 0.5}
    model, patched_clip = stack(models["wan22-5b"], [entry], clip=clip)
    assert model is models["wan22-5b"] and patched_clip is not clip
    assert [p[0] for p in patched_clip.patcher.patches[key]] == [0.5]
    _, same_clip = stack(models["wan22-5b"], [entry | {"text_encoder_scale": 0}], clip=clip)
    assert same_clip is clip
    with pytest.raises(lora.LoraMismatchError, match="only text-encoder layers; connect the CLIP"):
        stack(models["wan22-5b"], [{"path": "tiny/umt5-te.safetensors"}])

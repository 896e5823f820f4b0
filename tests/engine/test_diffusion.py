"""Diffusion models in-process: every tiny model loads through our loader and samples; fp8 stays close to
bf16; ComfyUI's own loader reads our fp8 files; wrong or damaged files fail before anything is built."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from pathlib import Path
from typing import Any

import comfy.ldm.flux.model
import comfy.ldm.lumina.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.qwen_image.model
import comfy.ldm.wan.model
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.sample
import comfy.sd
import comfy.utils
import pytest
import safetensors.torch
import torch
from darkroom.formats import arch, checkpoint
from darkroom.nodes import diffusion as nodes_diffusion
from darkroom.ops import diffusion
from darkroom.tiny import diffusion as tiny

W = checkpoint.WeightDtype
FLUX, WAN, ZIMAGE, SD3 = arch.Family.FLUX, arch.Family.WAN, arch.Family.ZIMAGE, arch.Family.SD3
QWEN = arch.Family.QWEN_IMAGE
# stem: (family, latent channels, latent format channels, variant)
MODELS = {
    "flux2": (FLUX, 128, 128, "flux2"),
    "flux1": (FLUX, 16, 16, "flux1-dev"),
    "wan22-ti2v-5b": (WAN, 48, 48, "wan22-ti2v-5b"),
    "wan22-a14b-high": (WAN, 16, 16, "wan21-t2v"),
    "wan22-a14b-low": (WAN, 16, 16, "wan21-t2v"),
    "wan22-a14b-i2v-high": (WAN, 16, 16, "wan21-t2v"),
    "wan22-a14b-i2v-low": (WAN, 16, 16, "wan21-t2v"),
    "wan22-s2v": (WAN, 16, 16, "wan22-s2v"),
    "zimage": (ZIMAGE, 16, 16, "zimage"),
    "sd35": (SD3, 16, 16, "sd35-medium"),
    "qwen-image": (QWEN, 16, 16, "qwen-image"),
    "qwen-image-edit-2511": (QWEN, 16, 16, "qwen-image-edit-2511"),
}
FILES = [f"{stem}-{kind}" for stem, _, _, _, kinds in tiny._MODELS for kind in kinds]


def _path(models_dir: Path, name: str) -> Path:
    return models_dir / "diffusion_models" / "tiny" / f"{name}.safetensors"


def _stem(name: str) -> str:
    return next(s for s in sorted(MODELS, key=len, reverse=True) if name.startswith(s + "-"))


def _inputs(stem: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fixed latent and conditioning for one model (text widths as agreed with the encoder side)."""
    family, channels, _, _ = MODELS[stem]
    gen = torch.Generator().manual_seed(7)
    if family is FLUX:
        size, ctx = (4, 192) if stem == "flux2" else (8, 64)
        kwargs: dict[str, Any] = {
            "c_crossattn": torch.randn(1, 16, ctx, generator=gen),
            "guidance": torch.tensor([3.5]),
        }
        if stem == "flux1":
            kwargs["y"] = torch.randn(1, 64, generator=gen)
        return torch.randn(1, channels, size, size, generator=gen), kwargs
    if family is SD3:  # context: CLIP-L + CLIP-G, then T5, all 4096 wide; pooled: 64 + 64
        kwargs = {
            "c_crossattn": torch.randn(1, 16, 4096, generator=gen),
            "y": torch.randn(1, 128, generator=gen),
        }
        return torch.randn(1, channels, 8, 8, generator=gen), kwargs
    if family is QWEN:  # one frame of the Wan 2.1 latent; Qwen2.5-VL context 32 wide
        return torch.randn(1, channels, 1, 8, 8, generator=gen), {
            "c_crossattn": torch.randn(1, 16, 32, generator=gen)
        }
    kwargs = {"c_crossattn": torch.randn(1, 16, 64, generator=gen)}
    if family is ZIMAGE:
        return torch.randn(1, channels, 8, 8, generator=gen), kwargs | {"num_tokens": 16}
    if stem.startswith("wan22-a14b-i2v"):
        kwargs["c_concat"] = torch.zeros(1, 20, 2, 8, 8)
    if stem == "wan22-s2v":  # 25 wav2vec2 layers, the tiny one's width 32, 4 audio frames a latent frame
        kwargs["audio_embed"] = torch.randn(1, 25, 32, 8, generator=gen)
    return torch.randn(1, channels, 2, 8, 8, generator=gen), kwargs


def _eps(patcher: Any, stem: str) -> torch.Tensor:
    """The raw model prediction at sigma 0.7 (flow models: x - denoised = sigma * prediction)."""
    x, kwargs = _inputs(stem)
    sigma = torch.tensor([0.7])
    comfy.model_management.load_models_gpu([patcher])  # applies this patcher's LoRA patches to the weights
    with torch.no_grad():
        denoised = patcher.model.apply_model(x, sigma, **kwargs)
    return (x - denoised) / 0.7


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_config_keys_match_comfyuis_model_signatures() -> None:
    flux = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
    wan = set(inspect.signature(comfy.ldm.wan.model.WanModel.__init__).parameters)
    assert flux == arch.FLUX_CONFIG_KEYS
    s2v = set(inspect.signature(comfy.ldm.wan.model.WanModel_S2V.__init__).parameters)
    assert wan - {"self", "device", "dtype", "operations", "wan_attn_block_class"} == arch.WAN_CONFIG_KEYS - {
        "audio_dim"
    }
    assert "audio_dim" in s2v  # the one WanModel_S2V size the weights show (the rest are its defaults)
    zimage = set(inspect.signature(comfy.ldm.lumina.model.NextDiT.__init__).parameters)
    assert zimage - {"self", "device", "dtype", "operations"} == arch.ZIMAGE_CONFIG_KEYS
    mmdit = set(inspect.signature(comfy.ldm.modules.diffusionmodules.mmdit.MMDiT.__init__).parameters)
    assert mmdit >= arch.SD3_CONFIG_KEYS  # it takes more (hidden widths follow depth; see arch/sd3.py)
    qwen = set(inspect.signature(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel.__init__).parameters)
    assert qwen - {"self", "device", "dtype", "operations", "final_layer"} == arch.QWEN_IMAGE_CONFIG_KEYS


# SD3's width is 64 x depth (ComfyUI's MMDiT fixes it): depth 3 is 192 wide.
_SD3_CTX = {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 192}}


@pytest.mark.parametrize(
    ("family", "config"),
    [
        (FLUX, tiny.FLUX2 | {"hidden_size": 256, "num_heads": 4, "depth": 2, "depth_single_blocks": 3}),
        (FLUX, tiny.FLUX2 | {"hidden_size": 384, "num_heads": 4, "axes_dim": [24] * 4, "depth": 0}),
        (FLUX, tiny.FLUX1 | {"hidden_size": 192, "num_heads": 2, "axes_dim": [12, 42, 42], "depth": 2}),
        (FLUX, tiny.FLUX1 | {"guidance_embed": False, "depth_single_blocks": 0}),
        (WAN, tiny.WAN22_5B | {"dim": 256, "num_heads": 2, "num_layers": 3, "ffn_dim": 512}),
        (WAN, tiny.WAN_A14B_I2V | {"dim": 384, "num_heads": 3}),
        (
            ZIMAGE,
            tiny.ZIMAGE | {"dim": 512, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "n_refiner_layers": 2},
        ),
        (ZIMAGE, tiny.ZIMAGE | {"dim": 384, "n_heads": 12, "n_kv_heads": 12, "axes_dims": [8, 12, 12]}),
        (
            SD3,
            tiny.SD35 | {"depth": 3, "x_block_self_attn_layers": [0, 2], "context_embedder_config": _SD3_CTX},
        ),
        (SD3, {k: v for k, v in tiny.SD35.items() if k != "qk_norm"} | {"x_block_self_attn_layers": []}),
        (QWEN, tiny.QWEN_IMAGE | {"num_layers": 3, "num_attention_heads": 4, "joint_attention_dim": 48}),
        (QWEN, tiny.QWEN_IMAGE | {"attention_head_dim": 128, "axes_dims_rope": (16, 56, 56)}),  # released
        (QWEN, tiny.QWEN_IMAGE_EDIT_2511 | {"attention_head_dim": 64, "axes_dims_rope": (8, 28, 28)}),
    ],
)
def test_inference_recovers_configs_from_comfyuis_own_layouts(
    family: arch.Family, config: dict[str, Any]
) -> None:
    shapes = diffusion.expected_shapes(arch.ArchConfig(family, "x", config))
    inferred = arch.infer(family, shapes, "meta").unet_config
    assert {k: inferred[k] for k in config} == config


@pytest.mark.parametrize("name", FILES)
def test_every_tiny_model_loads_and_predicts_finite_values(models_dir: Path, name: str) -> None:
    stem = _stem(name)
    _, channels, latent_channels, variant = MODELS[stem]
    patcher = diffusion.load_diffusion_model(_path(models_dir, name), MODELS[stem][0])
    assert type(patcher.model.model_config) is diffusion._MODEL_CONFIGS[variant]
    assert patcher.model.latent_format.latent_channels == latent_channels
    out = _eps(patcher, stem)
    assert out.shape[1] == channels and torch.isfinite(out).all() and out.std() > 0.1
    assert (patcher.model.model_config.quant_config is not None) is ("fp8" in name)


# Relative error of the raw prediction vs bf16, measured on the tiny models (FLUX.2 / Wan ~0.02 for e4m3fn
# and ~0.04 for e5m2; FLUX.1, whose in-block modulation is quantised too: e4m3fn 0.037, e4m3fn scaled
# 0.034, e5m2 0.087, e5m2 scaled 0.077). Bounds: ~2x the worst.
FP8_BOUNDS = {W.FP8_E4M3FN: 0.07, W.FP8_E5M2: 0.15, W.FP8_E4M3FN_SCALED: 0.07, W.FP8_E5M2_SCALED: 0.15}


@pytest.mark.parametrize("stem", ["flux2", "flux1", "wan22-ti2v-5b", "wan22-a14b-low", "sd35", "qwen-image"])
def test_fp8_on_load_stays_close_to_bf16(models_dir: Path, stem: str) -> None:
    reference = _eps(diffusion.load_diffusion_model(_path(models_dir, f"{stem}-bf16"), MODELS[stem][0]), stem)
    for weight_dtype, bound in FP8_BOUNDS.items():
        patcher = diffusion.load_diffusion_model(
            _path(models_dir, f"{stem}-bf16"), MODELS[stem][0], weight_dtype=weight_dtype
        )
        error = _rel(_eps(patcher, stem), reference)
        assert 0 < error < bound, (weight_dtype, error)


@pytest.mark.parametrize(
    ("stored", "weight_dtype"),
    [
        ("flux2-fp8_scaled", W.FP8_E4M3FN_SCALED),
        ("flux2-fp8_e5m2", W.FP8_E5M2),
        ("wan22-ti2v-5b-fp8_e4m3fn", W.FP8_E4M3FN),
    ],
)
def test_quantise_on_load_equals_the_prequantised_file(
    models_dir: Path, stored: str, weight_dtype: Any
) -> None:
    stem = _stem(stored)
    family = MODELS[stem][0]
    on_load = diffusion.load_diffusion_model(
        _path(models_dir, f"{stem}-bf16"), family, weight_dtype=weight_dtype
    )
    from_file = diffusion.load_diffusion_model(_path(models_dir, stored), family)
    assert torch.equal(_eps(on_load, stem), _eps(from_file, stem))


def test_bf16_from_a_scaled_file_and_comfyuis_loader_reads_our_fp8_file(models_dir: Path) -> None:
    path = _path(models_dir, "wan22-a14b-high-fp8_scaled")
    ours = _eps(diffusion.load_diffusion_model(path, WAN), "wan22-a14b-high")
    stock = comfy.sd.load_diffusion_model(str(path))  # tiny Wan: dim 128 -> ComfyUI's dim // 128 = 1 head too
    assert stock.model.model_config.quant_config == {"mixed_ops": True}
    assert torch.equal(_eps(stock, "wan22-a14b-high"), ours)
    dequantised = diffusion.load_diffusion_model(path, WAN, weight_dtype=W.BF16)
    assert dequantised.model.model_config.quant_config is None
    assert _rel(_eps(dequantised, "wan22-a14b-high"), ours) < 0.01


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built before the file was rejected")

    monkeypatch.setattr(comfy.model_base.BaseModel, "__init__", refuse)


@pytest.mark.usefixtures("nothing_built")
def test_wrong_family_is_rejected_before_building(models_dir: Path) -> None:
    wan = _path(models_dir, "wan22-ti2v-5b-bf16")
    with pytest.raises(
        arch.WrongFamilyError, match=rf"{wan}: not a FLUX diffusion model: it looks like a Wan"
    ):
        diffusion.load_diffusion_model(wan, FLUX)
    with pytest.raises(arch.WrongFamilyError, match="not a WAN diffusion model: it looks like a FLUX.2"):
        diffusion.load_diffusion_model(_path(models_dir, "flux2-bf16"), WAN)


@pytest.mark.usefixtures("nothing_built")
def test_truncated_file_is_rejected_with_counts_before_building(models_dir: Path, tmp_path: Path) -> None:
    sd = safetensors.torch.load_file(_path(models_dir, "flux1-bf16"))
    cut = tmp_path / "flux1-cut.safetensors"
    safetensors.torch.save_file(
        {k: v for k, v in sd.items() if not k.startswith("double_blocks.0.txt_")}, cut
    )
    with pytest.raises(checkpoint.CheckpointMismatchError) as err:
        diffusion.load_diffusion_model(cut, FLUX)
    assert f"{cut}: does not match the flux1-dev model" in str(err.value)
    assert "12 missing keys (e.g. double_blocks.0.txt_attn.norm.key_norm.scale" in str(err.value)
    assert "0 unexpected keys" in str(err.value)


def _sample(patcher: Any, latent: torch.Tensor, context: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    cond = [[context, {"pooled_output": torch.zeros(1, 64)}]]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    return comfy.sample.sample(
        patcher, noise, 4, 1.0, "euler", "simple", cond, cond, latent, disable_pbar=True, seed=1, **kwargs
    )


def test_flux2_64px_4_steps_samples(models_dir: Path) -> None:
    # Its speed (well under a second) is measured by scripts/bench_cold_start.py, not asserted here:
    # a timed test on a shared 2-core machine fails for reasons that are not ours.
    patcher = diffusion.load_diffusion_model(_path(models_dir, "flux2-bf16"), FLUX)
    context = torch.randn(1, 8, 192, generator=torch.Generator().manual_seed(2))
    out = _sample(patcher, torch.zeros(1, 128, 4, 4), context)
    assert torch.isfinite(out).all() and out.shape == (1, 128, 4, 4)
    assert out.abs().sum() > 0


def test_wan_5b_and_a14b_experts_sample(models_dir: Path) -> None:
    context = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(3))
    five_b = diffusion.load_diffusion_model(_path(models_dir, "wan22-ti2v-5b-fp8_scaled"), WAN)
    assert torch.isfinite(_sample(five_b, torch.zeros(1, 48, 2, 8, 8), context)).all()
    high = diffusion.load_diffusion_model(_path(models_dir, "wan22-a14b-high-bf16"), WAN)
    low = diffusion.load_diffusion_model(_path(models_dir, "wan22-a14b-low-fp8_scaled"), WAN)
    half = _sample(high, torch.zeros(1, 16, 2, 8, 8), context, last_step=2)
    out = _sample(low, half, context, start_step=2, disable_noise=True, force_full_denoise=True)
    assert torch.isfinite(out).all() and not torch.equal(out, half)


@pytest.mark.parametrize(
    ("lora", "model"),
    [
        ("flux2", "flux2-fp8_scaled"),
        ("flux1", "flux1-bf16"),
        ("wan22-5b", "wan22-ti2v-5b-bf16"),
        ("wan-a14b", "wan22-a14b-low-bf16"),
        ("zimage", "zimage-bf16"),
        ("sd35", "sd35-bf16"),
        ("qwen-image", "qwen-image-fp8_scaled"),
        ("qwen-image", "qwen-image-edit-2511-bf16"),
    ],
)
def test_tiny_loras_map_every_key_and_change_outputs(models_dir: Path, lora: str, model: str) -> None:
    stem = _stem(model)
    patcher = diffusion.load_diffusion_model(_path(models_dir, model), MODELS[stem][0])
    base = _eps(patcher, stem)
    loras = [
        comfy.utils.load_torch_file(str(models_dir / f"loras/tiny/{lora}-lora-{x}.safetensors")) for x in "ab"
    ]
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    assert len(comfy.lora.load_lora(loras[0], key_map)) == len(loras[0]) // 3  # up, down, alpha per module
    one, _ = comfy.sd.load_lora_for_models(patcher, None, loras[0], 1.0, 0)
    two, _ = comfy.sd.load_lora_for_models(one, None, loras[1], 1.0, 0)
    with_one, with_two = _eps(one, stem), _eps(two, stem)
    assert torch.isfinite(with_two).all()
    assert _rel(with_one, base) > 0.05 and _rel(with_two, with_one) > 0.05


def test_nodes_schema_validation_and_execution(models_dir: Path) -> None:
    flux, wan = nodes_diffusion.DarkroomFluxLoader, nodes_diffusion.DarkroomWanLoader
    assert [n.define_schema().node_id for n in nodes_diffusion.NODES] == [
        "DarkroomFluxLoader",
        "DarkroomWanLoader",
        "DarkroomZImageLoader",
        "DarkroomSD3Loader",
        "DarkroomQwenImageLoader",
        "DarkroomDiffusionLoader",
    ]
    for node in nodes_diffusion.NODES:
        schema = node.define_schema()
        family = ["family"] if node is nodes_diffusion.DarkroomDiffusionLoader else []
        assert all(i.tooltip for i in schema.inputs) and [i.id for i in schema.inputs] == [
            "model_name", "weight_dtype", "config_override", *family,
        ]  # fmt: skip
        assert "tiny/flux2-bf16.safetensors" in schema.inputs[0].options
    any_family = nodes_diffusion.DarkroomDiffusionLoader
    zimage_file = {"model_name": "tiny/zimage-bf16.safetensors", "weight_dtype": "default"}
    assert "not a FLUX" in str(any_family.validate_inputs(**zimage_file, family="flux"))
    assert any_family.validate_inputs(**zimage_file, family="zimage") is True
    assert "is not one of" in str(any_family.validate_inputs(**zimage_file, family="nope"))
    ok = flux.validate_inputs(model_name="tiny/flux2-bf16.safetensors", weight_dtype="fp8_e5m2_scaled")
    assert ok is True
    assert "not a FLUX" in flux.validate_inputs(
        model_name="tiny/wan22-ti2v-5b-bf16.safetensors", weight_dtype="default"
    )
    zimage = nodes_diffusion.DarkroomZImageLoader
    assert (
        zimage.validate_inputs(model_name="tiny/zimage-bf16.safetensors", weight_dtype="fp8_e4m3fn") is True
    )
    assert "not a Z-Image" in zimage.validate_inputs(
        model_name="tiny/flux1-bf16.safetensors", weight_dtype="default"
    )
    assert "round twice" in wan.validate_inputs(
        model_name="tiny/wan22-ti2v-5b-fp8_e4m3fn.safetensors", weight_dtype="fp8_e5m2"
    )
    assert "not valid JSON" in flux.validate_inputs(
        model_name="tiny/flux2-bf16.safetensors", weight_dtype="default", config_override="{"
    )
    assert "unknown keys" in flux.validate_inputs(
        model_name="tiny/flux2-bf16.safetensors", weight_dtype="default", config_override='{"heads": 2}'
    )
    assert "not in models/diffusion_models" in flux.validate_inputs(
        model_name="nope.safetensors", weight_dtype="default"
    )
    # The q/k norms say 64-wide heads, so a heads override is caught at queue time by the strict check;
    # shape-neutral keys (rope axes, theta) go through.
    heads = '{"num_heads": 4, "axes_dim": [8, 8, 8, 8]}'
    message = flux.validate_inputs(
        model_name="tiny/flux2-bf16.safetensors", weight_dtype="default", config_override=heads
    )
    assert "6 shape mismatches" in message
    override = '{"axes_dim": [8, 24, 16, 16], "theta": 1000}'
    (model,) = flux.execute(
        model_name="tiny/flux2-bf16.safetensors", weight_dtype="bf16", config_override=override
    ).args
    assert model.model.diffusion_model.params.theta == 1000 and torch.isfinite(_eps(model, "flux2")).all()


def test_rebuilding_tiny_models_gives_identical_bytes(models_dir: Path, tmp_path: Path) -> None:
    for path in tiny.build(tmp_path):
        twin = models_dir / path.relative_to(tmp_path)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest(), (
            path.name
        )


# SD 3.5 as released (Stability's sd3.5_large / sd3.5_medium): depth 38 with 192 positions a side; depth
# 24, MMDiT-X attention in blocks 0-12, 384 positions. Pooled 2048 (CLIP-L 768 + CLIP-G 1280).
_SD35_RELEASED = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "input_size": None,
                  "qk_norm": "rms", "adm_in_channels": 2048, "pos_embed_scaling_factor": None}  # fmt: skip


@pytest.mark.parametrize(
    ("depth", "positions", "attn2"), [(38, 192, []), (24, 384, list(range(13)))], ids=["large", "medium"]
)
def test_released_sd35_layouts_give_comfyuis_own_detected_config(
    depth: int, positions: int, attn2: list[int]
) -> None:
    """The real endpoints' files: our inference reads the config ComfyUI's detection reads (on the meta
    device, at full size), so fal-ai/stable-diffusion-v35-large and -medium bind MMDiT and MMDiT-X."""
    import comfy.model_detection

    context = {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * depth}}
    config = _SD35_RELEASED | {"depth": depth, "context_embedder_config": context}
    config |= {
        "num_patches": positions**2,
        "pos_embed_max_size": positions,
        "x_block_self_attn_layers": attn2,
    }
    shapes = diffusion.expected_shapes(arch.ArchConfig(SD3, "x", config))
    inferred = arch.infer(SD3, shapes, "meta")
    meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert inferred.unet_config == comfy.model_detection.detect_unet_config(meta, "") == config
    assert inferred.variant == ("sd35-medium" if attn2 else "sd3")

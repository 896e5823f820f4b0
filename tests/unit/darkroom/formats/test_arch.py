"""formats/arch: configs inferred from key names and shapes for many widths and depths (no ComfyUI).

The layouts below mirror comfy.ldm.flux.model.Flux and comfy.ldm.wan.model.WanModel; tests/engine checks
inference against ComfyUI's real classes too.
"""

from __future__ import annotations

from typing import Any

import pytest
from darkroom.formats import arch

Shapes = dict[str, tuple[int, ...]]


def flux_shapes(
    hidden: int,
    head_dim: int,
    depth: int,
    single: int,
    *,
    flux2: bool,
    context: int = 64,
    vec: int | None = 64,
) -> Shapes:
    """Key -> shape of a FLUX.2 (global modulation, SiLU-gated MLP x3, no biases) or FLUX.1-dev model."""
    mlp, patch = (3 * hidden, 1) if flux2 else (4 * hidden, 2)
    in_ch = 128 if flux2 else 16
    out: Shapes = {
        "img_in.weight": (hidden, in_ch * patch * patch),
        "txt_in.weight": (hidden, context),
        "time_in.in_layer.weight": (hidden, 256),
        "time_in.out_layer.weight": (hidden, hidden),
        "guidance_in.in_layer.weight": (hidden, 256),
        "guidance_in.out_layer.weight": (hidden, hidden),
        "final_layer.linear.weight": (in_ch * patch * patch, hidden),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
    }
    if vec is not None and not flux2:
        out |= {"vector_in.in_layer.weight": (hidden, vec), "vector_in.out_layer.weight": (hidden, hidden)}
    mlp_in = 2 * mlp if flux2 else mlp
    for i in range(depth):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}_"
            out |= {
                p + "attn.qkv.weight": (3 * hidden, hidden),
                p + "attn.norm.query_norm.scale": (head_dim,),
                p + "attn.norm.key_norm.scale": (head_dim,),
                p + "attn.proj.weight": (hidden, hidden),
                p + "mlp.0.weight": (mlp_in, hidden),
                p + "mlp.2.weight": (hidden, mlp),
            }
            if not flux2:
                out |= {p + "attn.qkv.bias": (3 * hidden,), p + "mod.lin.weight": (6 * hidden, hidden)}
    for i in range(single):
        p = f"single_blocks.{i}."
        out |= {
            p + "linear1.weight": (3 * hidden + mlp_in, hidden),
            p + "linear2.weight": (hidden, hidden + mlp),
            p + "norm.query_norm.scale": (head_dim,),
            p + "norm.key_norm.scale": (head_dim,),
        }
    if flux2:
        out["double_stream_modulation_img.lin.weight"] = (6 * hidden, hidden)
    else:
        out |= {k.replace(".weight", ".bias"): (s[0],) for k, s in out.items() if k.endswith(".weight")}
    return out


def wan_shapes(dim: int, layers: int, *, in_dim: int = 16, out_dim: int = 16, i2v: bool = False) -> Shapes:
    """Key -> shape of a Wan 2.1-layout model (patch 1x2x2, text_dim 64)."""
    out: Shapes = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2),
        "text_embedding.0.weight": (dim, 64),
        "time_embedding.0.weight": (dim, 256),
        "head.modulation": (1, 2, dim),
        "head.head.weight": (out_dim * 4, dim),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        out |= {
            p + "modulation": (1, 6, dim),
            p + "ffn.0.weight": (4 * dim, dim),
            p + "ffn.2.weight": (dim, 4 * dim),
        }
        out |= {f"{p}{a}.{w}.weight": (dim, dim) for a in ("self_attn", "cross_attn") for w in "qkvo"}
        out |= {p + "self_attn.norm_q.weight": (dim,), p + "norm3.weight": (dim,)}
    if i2v:
        out["img_emb.proj.0.bias"] = (1280,)
    return out


@pytest.mark.parametrize(
    ("hidden", "head_dim", "depth", "single"),
    [(128, 64, 1, 1), (256, 64, 2, 3), (384, 96, 0, 2), (6144, 128, 8, 48)],
)
def test_flux2_config_from_shapes(hidden: int, head_dim: int, depth: int, single: int) -> None:
    cfg = arch.infer(
        arch.Family.FLUX, flux_shapes(hidden, head_dim, depth, single, flux2=True, context=192), "m"
    )
    u = cfg.unet_config
    assert cfg.variant == "flux2" and u["image_model"] == "flux2"
    assert (u["hidden_size"], u["num_heads"], u["depth"], u["depth_single_blocks"]) == (
        hidden, hidden // head_dim, depth, single,
    )  # fmt: skip
    assert (
        sum(u["axes_dim"]) == head_dim and len(u["axes_dim"]) == 4 and all(a % 2 == 0 for a in u["axes_dim"])
    )
    assert (u["in_channels"], u["out_channels"], u["patch_size"], u["context_in_dim"]) == (128, 128, 1, 192)
    assert u["mlp_ratio"] == 3.0 and u["vec_in_dim"] is None and u["guidance_embed"] is True
    assert u["global_modulation"] and u["mlp_silu_act"] and not u["ops_bias"] and not u["qkv_bias"]


def test_flux2_full_width_matches_comfyuis_hardcoded_values() -> None:
    u = arch.infer(
        arch.Family.FLUX, flux_shapes(6144, 128, 8, 48, flux2=True, context=15360), "m"
    ).unet_config
    assert (u["num_heads"], u["axes_dim"], u["theta"], u["txt_ids_dims"]) == (48, [32, 32, 32, 32], 2000, [3])


@pytest.mark.parametrize(("guidance", "variant"), [(True, "flux1-dev"), (False, "flux1-schnell")])
def test_flux1_dev_and_schnell(guidance: bool, variant: str) -> None:
    shapes = flux_shapes(3072, 128, 19, 38, flux2=False, context=4096, vec=768)
    if not guidance:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("guidance_in.")}
    cfg = arch.infer(arch.Family.FLUX, shapes, "m")
    u = cfg.unet_config
    assert cfg.variant == variant and u["guidance_embed"] is guidance
    assert (u["num_heads"], u["axes_dim"], u["mlp_ratio"], u["vec_in_dim"]) == (24, [16, 56, 56], 4.0, 768)
    assert (u["in_channels"], u["out_channels"], u["patch_size"], u["qkv_bias"]) == (16, 16, 2, True)


def test_flux1_tiny_width_gets_proportional_rope_axes() -> None:
    u = arch.infer(arch.Family.FLUX, flux_shapes(128, 64, 1, 1, flux2=False), "m").unet_config
    assert (u["num_heads"], u["axes_dim"], u["context_in_dim"], u["vec_in_dim"]) == (2, [8, 28, 28], 64, 64)


def test_axes_dim_sum_to_head_dim_and_stay_even() -> None:
    for head_dim in range(8, 514, 2):
        for flux2 in (True, False):
            axes = arch.flux_axes_dim(head_dim, flux2)
            assert sum(axes) == head_dim and all(a % 2 == 0 and a > 0 for a in axes), (head_dim, flux2, axes)
        first, second, third = arch.flux_axes_dim(head_dim, False)
        assert second == third and abs(first - head_dim / 8) <= 4, (head_dim, first)
    with pytest.raises(arch.ArchInferenceError, match="axes_dim"):
        arch.flux_axes_dim(63, True)


@pytest.mark.parametrize(
    ("dim", "layers", "heads"), [(128, 2, 1), (192, 1, 2), (1536, 30, 12), (3072, 30, 24), (5120, 40, 40)]
)
def test_wan_config_from_shapes(dim: int, layers: int, heads: int) -> None:
    cfg = arch.infer(arch.Family.WAN, wan_shapes(dim, layers), "m")
    u = cfg.unet_config
    assert cfg.variant == "wan21-t2v" and u["model_type"] == "t2v"
    assert (u["dim"], u["num_layers"], u["num_heads"], u["ffn_dim"], u["text_dim"]) == (
        dim,
        layers,
        heads,
        4 * dim,
        64,
    )
    assert (u["in_dim"], u["out_dim"], u["patch_size"], u["freq_dim"]) == (16, 16, (1, 2, 2), 256)


def test_wan22_ti2v_5b_and_a14b_i2v_expert_and_wan21_i2v() -> None:
    assert (
        arch.infer(arch.Family.WAN, wan_shapes(3072, 2, in_dim=48, out_dim=48), "m").variant
        == "wan22-ti2v-5b"
    )
    expert = arch.infer(arch.Family.WAN, wan_shapes(128, 2, in_dim=36), "m")
    assert (
        expert.variant == "wan21-t2v" and expert.unet_config["in_dim"] == 36
    )  # A14B I2V: no CLIP image branch
    assert arch.infer(arch.Family.WAN, wan_shapes(128, 2, in_dim=36, i2v=True), "m").variant == "wan21-i2v"


def test_wan_file_given_to_flux_is_rejected_with_file_and_kind() -> None:
    with pytest.raises(arch.WrongFamilyError) as err:
        arch.find_prefix(wan_shapes(128, 1), arch.Family.FLUX, "/models/wan.safetensors")
    message = str(err.value)
    assert "/models/wan.safetensors" in message and "not a FLUX" in message and "Wan" in message
    assert err.value.code == "wrong_model_family"


def test_flux_file_given_to_wan_is_rejected() -> None:
    with pytest.raises(arch.WrongFamilyError, match=r"f\.safetensors: not a WAN .*FLUX\.2"):
        arch.find_prefix(flux_shapes(128, 64, 1, 1, flux2=True), arch.Family.WAN, "f.safetensors")


def test_checkpoint_prefix_is_found() -> None:
    shapes = {"model.diffusion_model." + k: v for k, v in flux_shapes(128, 64, 1, 1, flux2=True).items()}
    assert arch.find_prefix(shapes, arch.Family.FLUX, "m") == "model.diffusion_model."


def test_override_is_merged_and_checked() -> None:
    shapes = flux_shapes(256, 64, 1, 1, flux2=True)
    cfg = arch.infer(arch.Family.FLUX, shapes, "m", {"num_heads": 8, "axes_dim": [8, 8, 8, 8], "theta": 1000})
    assert (cfg.unet_config["num_heads"], cfg.unet_config["theta"]) == (8, 1000)
    with pytest.raises(arch.ArchInferenceError, match="unknown keys \\['heads'\\]"):
        arch.infer(arch.Family.FLUX, shapes, "m", {"heads": 8})
    with pytest.raises(arch.ArchInferenceError, match="axes_dim"):
        arch.infer(arch.Family.FLUX, shapes, "m", {"num_heads": 8})
    wan = arch.infer(arch.Family.WAN, wan_shapes(256, 1), "m", {"num_heads": 4, "patch_size": [1, 2, 2]})
    assert wan.unet_config["patch_size"] == (1, 2, 2) and wan.unet_config["num_heads"] == 4


@pytest.mark.parametrize(
    ("text", "expected"), [("", {}), ("  ", {}), (None, {}), ('{"depth": 2}', {"depth": 2})]
)
def test_parse_override(text: str | None, expected: dict[str, Any]) -> None:
    assert arch.parse_override(text) == expected


@pytest.mark.parametrize(("text", "match"), [("{depth", "not valid JSON"), ("[1]", "JSON object")])
def test_parse_override_rejects(text: str, match: str) -> None:
    with pytest.raises(arch.ArchInferenceError, match=match):
        arch.parse_override(text)


def test_missing_tensor_and_unsupported_variants_are_named() -> None:
    shapes = flux_shapes(128, 64, 1, 1, flux2=True)
    del (
        shapes["double_blocks.0.img_attn.norm.query_norm.scale"],
        shapes["single_blocks.0.norm.query_norm.scale"],
    )
    with pytest.raises(arch.ArchInferenceError, match="q/k-norm"):
        arch.infer(arch.Family.FLUX, shapes, "m")
    with pytest.raises(arch.WrongFamilyError, match="VACE"):
        arch.infer(arch.Family.WAN, wan_shapes(128, 1) | {"vace_patch_embedding.weight": (1, 1)}, "m")


def test_quantisable_weights_are_block_linears_only() -> None:
    flux = arch.Family.FLUX
    assert arch.quantisable(flux, "double_blocks.0.img_attn.qkv.weight", (384, 128))
    assert arch.quantisable(flux, "single_blocks.3.linear2.weight", (128, 512))
    assert not arch.quantisable(flux, "double_blocks.0.img_attn.qkv.bias", (384,))
    assert not arch.quantisable(flux, "double_blocks.0.img_attn.norm.query_norm.scale", (64,))
    assert not arch.quantisable(flux, "img_in.weight", (128, 128))
    assert not arch.quantisable(flux, "double_stream_modulation_img.lin.weight", (768, 128))
    assert arch.quantisable(arch.Family.WAN, "blocks.1.ffn.0.weight", (256, 128))
    assert not arch.quantisable(arch.Family.WAN, "blocks.1.modulation", (1, 6, 128))
    assert not arch.quantisable(arch.Family.WAN, "patch_embedding.weight", (128, 16, 1, 2, 2))


def zimage_shapes(
    dim: int, head_dim: int, layers: int, *, kv_heads: int | None = None, cap: int = 64
) -> Shapes:
    """Key -> shape of a Z-Image NextDiT (comfy.ldm.lumina.model, z_image_modulation) with 2 refiners."""
    heads = dim // head_dim
    kv = kv_heads or heads
    ffn = -(-int(8 / 3 * dim) // 256) * 256
    out: Shapes = {
        "x_embedder.weight": (dim, 64),
        "cap_embedder.0.weight": (cap,),
        "cap_embedder.1.weight": (dim, cap),
        "final_layer.linear.weight": (64, dim),
        "t_embedder.mlp.0.weight": (min(dim, 1024), 256),
        "x_pad_token": (1, dim),
        "cap_pad_token": (1, dim),
    }
    blocks = [f"layers.{i}." for i in range(layers)]
    blocks += [f"{kind}.{i}." for kind in ("noise_refiner", "context_refiner") for i in range(2)]
    for p in blocks:
        out |= {
            p + "attention.qkv.weight": ((heads + 2 * kv) * head_dim, dim),
            p + "attention.out.weight": (dim, heads * head_dim),
            p + "attention.q_norm.weight": (head_dim,),
            p + "feed_forward.w1.weight": (ffn, dim),
        }
        if not p.startswith("context_refiner"):
            out[p + "adaLN_modulation.0.weight"] = (4 * dim, min(dim, 256))
    return out


def test_zimage_full_width_matches_comfyuis_detection() -> None:
    """At 3840 wide, the config is exactly what comfy/model_detection.py:434-444 hardcodes."""
    config = arch.infer(arch.Family.ZIMAGE, zimage_shapes(3840, 128, 30, cap=2560), "z.safetensors")
    assert config.variant == "zimage"
    expected = {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
        "n_layers": 30, "n_refiner_layers": 2, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30,
        "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 256, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    }  # fmt: skip
    assert config.unet_config == expected


@pytest.mark.parametrize(
    ("dim", "head_dim", "layers", "kv_heads", "axes"),
    [(256, 128, 1, None, [32, 48, 48]), (512, 64, 3, 2, [16, 24, 24]), (384, 32, 2, 4, [8, 12, 12])],
)
def test_zimage_config_from_shapes_at_other_widths(
    dim: int, head_dim: int, layers: int, kv_heads: int | None, axes: list[int]
) -> None:
    config = arch.infer(arch.Family.ZIMAGE, zimage_shapes(dim, head_dim, layers, kv_heads=kv_heads), "z")
    cfg = config.unet_config
    assert (cfg["dim"], cfg["n_layers"], cfg["n_heads"]) == (dim, layers, dim // head_dim)
    assert cfg["n_kv_heads"] == (kv_heads or dim // head_dim)
    assert cfg["axes_dims"] == axes and sum(axes) == head_dim


def test_zimage_odd_ffn_width_is_taken_exactly() -> None:
    shapes = zimage_shapes(256, 128, 1)
    shapes["layers.0.feed_forward.w1.weight"] = (700, 256)
    cfg = arch.infer(arch.Family.ZIMAGE, shapes, "z").unet_config
    hidden = int(cfg["ffn_dim_multiplier"] * 256)
    assert cfg["multiple_of"] * -(-hidden // cfg["multiple_of"]) == 700  # NextDiT's FeedForward rule


def test_zimage_loader_names_other_files_and_lumina2() -> None:
    with pytest.raises(arch.WrongFamilyError, match="Wan"):
        arch.find_prefix(wan_shapes(128, 2), arch.Family.ZIMAGE, "w.safetensors")
    with pytest.raises(arch.WrongFamilyError, match="Z-Image"):
        arch.find_prefix(zimage_shapes(256, 128, 1), arch.Family.FLUX, "z.safetensors")
    lumina = zimage_shapes(256, 128, 1)
    lumina["layers.0.adaLN_modulation.1.weight"] = lumina.pop("layers.0.adaLN_modulation.0.weight")
    with pytest.raises(arch.WrongFamilyError, match="Lumina 2"):
        arch.infer(arch.Family.ZIMAGE, lumina, "l.safetensors")
    with pytest.raises(arch.ArchInferenceError, match="axes_dims"):
        arch.infer(arch.Family.ZIMAGE, zimage_shapes(256, 128, 1), "z", {"axes_dims": [32, 32, 32]})


def qwen_image_shapes(inner: int, head_dim: int, layers: int, joint: int = 32, *, marker: str = "") -> Shapes:
    """Key -> shape of a Qwen-Image transformer (comfy.ldm.qwen_image.model's layout), as far as inference
    reads it; `marker` adds 2511's or Layered's distinguishing tensor."""
    out: Shapes = {
        "img_in.weight": (inner, 64),
        "txt_in.weight": (inner, joint),
        "txt_norm.weight": (joint,),
        "proj_out.weight": (64, inner),
        "norm_out.linear.weight": (2 * inner, inner),
    }
    for i in range(layers):
        p = f"transformer_blocks.{i}."
        out |= {
            p + "img_mod.1.weight": (6 * inner, inner),
            p + "attn.norm_q.weight": (head_dim,),
            p + "attn.to_q.weight": (inner, inner),
        }
    if marker:
        out[marker] = (0,) if marker.startswith("__") else (2, inner)
    return out


@pytest.mark.parametrize(("inner", "head_dim", "layers"), [(64, 32, 1), (256, 64, 3), (3072, 128, 60)])
def test_qwen_image_config_from_shapes(inner: int, head_dim: int, layers: int) -> None:
    cfg = arch.infer(arch.Family.QWEN_IMAGE, qwen_image_shapes(inner, head_dim, layers), "m")
    u = cfg.unet_config
    assert cfg.variant == "qwen-image" and u["default_ref_method"] == "index"
    assert (u["num_attention_heads"], u["attention_head_dim"], u["num_layers"]) == (
        inner // head_dim,
        head_dim,
        layers,
    )
    assert (u["in_channels"], u["out_channels"], u["patch_size"], u["joint_attention_dim"]) == (64, 16, 2, 32)
    assert sum(u["axes_dims_rope"]) == head_dim
    if head_dim == 128:  # the released Qwen-Image: ComfyUI's own defaults (24 heads, rope 16/56/56)
        assert u["num_attention_heads"] == 24 and u["axes_dims_rope"] == (16, 56, 56)


def test_qwen_image_edit_2511_and_layered_are_told_apart() -> None:
    edit = arch.infer(
        arch.Family.QWEN_IMAGE, qwen_image_shapes(64, 32, 1, marker="__index_timestep_zero__"), "m"
    )
    assert edit.variant == "qwen-image-edit-2511"
    assert edit.unet_config["default_ref_method"] == "index_timestep_zero"
    layered_key = "time_text_embed.addition_t_embedding.weight"
    layered = arch.infer(arch.Family.QWEN_IMAGE, qwen_image_shapes(64, 32, 1, marker=layered_key), "m")
    assert layered.variant == "qwen-image-layered" and layered.unet_config["use_additional_t_cond"] is True


def test_qwen_image_family_checks_and_overrides() -> None:
    with pytest.raises(arch.WrongFamilyError, match=r"q\.safetensors: not a FLUX .*a Qwen-Image diffusion"):
        arch.find_prefix(qwen_image_shapes(64, 32, 1), arch.Family.FLUX, "q.safetensors")
    with pytest.raises(arch.WrongFamilyError, match="not a QWEN_IMAGE .*FLUX.2"):
        arch.find_prefix(flux_shapes(128, 64, 1, 1, flux2=True), arch.Family.QWEN_IMAGE, "f")
    shapes = qwen_image_shapes(64, 32, 1)
    assert arch.infer(arch.Family.QWEN_IMAGE, shapes, "m", {"axes_dims_rope": [8, 12, 12]}).unet_config[
        "axes_dims_rope"
    ] == (8, 12, 12)
    with pytest.raises(arch.ArchInferenceError, match="summing to attention_head_dim 32"):
        arch.infer(arch.Family.QWEN_IMAGE, shapes, "m", {"axes_dims_rope": [8, 8, 8]})
    with pytest.raises(arch.ArchInferenceError, match="unknown keys"):
        arch.infer(arch.Family.QWEN_IMAGE, shapes, "m", {"num_heads": 2})
    assert arch.quantisable(arch.Family.QWEN_IMAGE, "transformer_blocks.0.attn.to_q.weight", (64, 64))
    assert not arch.quantisable(arch.Family.QWEN_IMAGE, "img_in.weight", (64, 64))

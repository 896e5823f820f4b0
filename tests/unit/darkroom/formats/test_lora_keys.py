"""LoRA key formats without ComfyUI: diffusers names match diffusers' own conversion tables, every format
converts back to ComfyUI's exactly, split q/k/v LoRAs fuse exactly, and misfits are reported, not applied."""

from __future__ import annotations

import pytest
import torch
from darkroom.formats import lora_keys as lk
from darkroom.formats import lora_names as ln
from darkroom.formats.arch import Shape
from darkroom.formats.lora_keys import ALPHA, DOWN, UP, LoraFormat
from darkroom.formats.lora_names import Target

H = 8  # hidden width of the synthetic layouts below


def flux2_shapes() -> dict[str, Shape]:
    """FLUX.2 key layout (one double, one single block), widths shrunk to H."""
    block = "double_blocks.0."
    return {
        "img_in.weight": (H, 16), "txt_in.weight": (H, 12),
        "time_in.in_layer.weight": (H, 32), "time_in.out_layer.weight": (H, H),
        "guidance_in.in_layer.weight": (H, 32), "guidance_in.out_layer.weight": (H, H),
        "double_stream_modulation_img.lin.weight": (6 * H, H),
        "double_stream_modulation_txt.lin.weight": (6 * H, H),
        "single_stream_modulation.lin.weight": (3 * H, H),
        f"{block}img_attn.qkv.weight": (3 * H, H), f"{block}txt_attn.qkv.weight": (3 * H, H),
        f"{block}img_attn.proj.weight": (H, H), f"{block}txt_attn.proj.weight": (H, H),
        f"{block}img_attn.norm.query_norm.scale": (4,),
        f"{block}img_mlp.0.weight": (6 * H, H), f"{block}img_mlp.2.weight": (H, 3 * H),
        f"{block}txt_mlp.0.weight": (6 * H, H), f"{block}txt_mlp.2.weight": (H, 3 * H),
        "single_blocks.0.linear1.weight": (9 * H, H), "single_blocks.0.linear2.weight": (H, 4 * H),
        "final_layer.adaLN_modulation.1.weight": (2 * H, H), "final_layer.linear.weight": (16, H),
    }  # fmt: skip


def flux1_shapes() -> dict[str, Shape]:
    """FLUX.1 key layout (per-block modulation, vector_in, biases), widths shrunk to H."""
    block = "double_blocks.0."
    return {
        "img_in.weight": (H, 64), "img_in.bias": (H,), "txt_in.weight": (H, 12),
        "vector_in.in_layer.weight": (H, 6), "vector_in.out_layer.weight": (H, H),
        "time_in.in_layer.weight": (H, 32), "time_in.out_layer.weight": (H, H),
        f"{block}img_mod.lin.weight": (6 * H, H), f"{block}txt_mod.lin.weight": (6 * H, H),
        f"{block}img_attn.qkv.weight": (3 * H, H), f"{block}img_attn.qkv.bias": (3 * H,),
        f"{block}txt_attn.qkv.weight": (3 * H, H), f"{block}img_attn.proj.weight": (H, H),
        f"{block}txt_attn.proj.weight": (H, H), f"{block}img_mlp.0.weight": (4 * H, H),
        f"{block}img_mlp.2.weight": (H, 4 * H), f"{block}txt_mlp.0.weight": (4 * H, H),
        f"{block}txt_mlp.2.weight": (H, 4 * H), "single_blocks.0.linear1.weight": (7 * H, H),
        "single_blocks.0.linear2.weight": (H, 5 * H), "single_blocks.0.modulation.lin.weight": (3 * H, H),
        "final_layer.adaLN_modulation.1.weight": (2 * H, H), "final_layer.linear.weight": (64, H),
    }  # fmt: skip


def wan_shapes() -> dict[str, Shape]:
    """Wan 2.1 key layout (one block), widths shrunk to H."""
    block = {f"blocks.0.{a}.{p}.weight": (H, H) for a in ("self_attn", "cross_attn") for p in "qkvo"}
    return block | {
        "patch_embedding.weight": (H, 16, 1, 2, 2), "text_embedding.0.weight": (H, 12),
        "text_embedding.2.weight": (H, H), "time_embedding.0.weight": (H, 16),
        "time_embedding.2.weight": (H, H), "time_projection.1.weight": (6 * H, H),
        "blocks.0.ffn.0.weight": (2 * H, H), "blocks.0.ffn.2.weight": (H, 2 * H),
        "blocks.0.modulation": (1, 6, H), "blocks.0.norm3.weight": (H,),
        "head.head.weight": (64, H), "head.modulation": (1, 2, H),
    }  # fmt: skip


LAYOUTS = {"FLUX.2": flux2_shapes, "FLUX.1": flux1_shapes, "Wan": wan_shapes}


def comfy_lora(shapes: dict[str, Shape], rank: int = 2, alpha: float | None = 2.0) -> dict[str, torch.Tensor]:
    """A random ComfyUI-format LoRA on every weight with a diffusers name (convolutions included)."""
    gen = torch.Generator().manual_seed(0)
    modules = sorted({t.module for t in ln.diffusers_names(shapes).values()})
    out = {}
    for module in modules:
        rows, *rest = shapes[f"{module}.weight"]
        out[f"diffusion_model.{module}{UP}"] = torch.randn(rows, rank, *[1] * len(rest[1:]), generator=gen)
        out[f"diffusion_model.{module}{DOWN}"] = torch.randn(rank, *rest, generator=gen)
        if alpha is not None:
            out[f"diffusion_model.{module}{ALPHA}"] = torch.tensor(alpha)
    return out


def deltas(comfy_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """module -> the weight change a ComfyUI-format LoRA makes (alpha / rank * up @ down)."""
    out = {}
    for key in comfy_sd:
        if key.endswith(UP):
            module = key[: -len(UP)]
            up, down = comfy_sd[key].double().flatten(1), comfy_sd[module + DOWN].double().flatten(1)
            alpha = comfy_sd.get(module + ALPHA)
            out[module] = (1.0 if alpha is None else float(alpha) / down.shape[0]) * up @ down
    return out


def test_flux2_diffusers_names_follow_diffusers_conversion() -> None:
    names = ln.diffusers_names(flux2_shapes())
    qkv, txt = "double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv"
    assert names["transformer_blocks.0.attn.to_q"] == Target(qkv, (0, H))
    assert names["transformer_blocks.0.attn.to_v"] == Target(qkv, (2 * H, H))
    assert names["transformer_blocks.0.attn.add_k_proj"] == Target(txt, (H, H))
    expected = {
        "transformer_blocks.0.attn.to_out.0": "double_blocks.0.img_attn.proj",
        "transformer_blocks.0.attn.to_add_out": "double_blocks.0.txt_attn.proj",
        "transformer_blocks.0.ff.linear_in": "double_blocks.0.img_mlp.0",
        "transformer_blocks.0.ff.linear_out": "double_blocks.0.img_mlp.2",
        "transformer_blocks.0.ff_context.linear_in": "double_blocks.0.txt_mlp.0",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj": "single_blocks.0.linear1",
        "single_transformer_blocks.0.attn.to_out": "single_blocks.0.linear2",
        "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin",
    }  # fmt: skip
    assert {k: names[k] for k in expected} == {k: Target(v) for k, v in expected.items()}
    assert names["norm_out.linear"] == Target("final_layer.adaLN_modulation.1", swap_halves=True)
    assert ln.model_family(flux2_shapes()) == "FLUX.2"


def test_flux1_and_wan_diffusers_names() -> None:
    flux1 = ln.diffusers_names(flux1_shapes())
    linear1 = "single_blocks.0.linear1"
    assert flux1["single_transformer_blocks.0.attn.to_k"] == Target(linear1, (H, H))
    assert flux1["single_transformer_blocks.0.proj_mlp"] == Target(linear1, (3 * H, 4 * H))
    assert flux1["single_transformer_blocks.0.norm.linear"] == Target("single_blocks.0.modulation.lin")
    assert flux1["transformer_blocks.0.norm1_context.linear"] == Target("double_blocks.0.txt_mod.lin")
    assert flux1["transformer_blocks.0.ff.net.0.proj"] == Target("double_blocks.0.img_mlp.0")
    assert flux1["time_text_embed.text_embedder.linear_1"] == Target("vector_in.in_layer")
    wan = ln.diffusers_names(wan_shapes())
    assert wan["blocks.0.attn1.to_out.0"] == Target("blocks.0.self_attn.o")
    assert wan["blocks.0.attn2.to_k"] == Target("blocks.0.cross_attn.k")
    assert wan["blocks.0.ffn.net.0.proj"] == Target("blocks.0.ffn.0")
    assert wan["condition_embedder.time_proj"] == Target("time_projection.1")
    assert wan["proj_out"] == Target("head.head")


@pytest.mark.parametrize("family", LAYOUTS)
@pytest.mark.parametrize("fmt", list(LoraFormat))
def test_every_format_converts_back_to_the_same_lora(family: str, fmt: LoraFormat) -> None:
    shapes = LAYOUTS[family]()
    original = comfy_lora(shapes, alpha=2.0)  # alpha == rank: diffusers files carry no alpha
    rendered = lk.render(original, shapes, fmt)
    conv = lk.to_comfy(rendered, lk.KeyTables.build(shapes))
    assert conv.unmatched == [] and conv.problems == [] and len(conv.matched) == len(rendered)
    assert conv.formats == {fmt}
    for key, tensor in conv.state_dict.items():
        assert torch.equal(tensor, original[key]), key
    assert set(original) - set(conv.state_dict) <= {k for k in original if k.endswith(ALPHA)}


def test_alpha_is_folded_into_diffusers_b() -> None:
    shapes = flux2_shapes()
    original = comfy_lora(shapes, alpha=0.5)
    conv = lk.to_comfy(lk.render(original, shapes, LoraFormat.DIFFUSERS), lk.KeyTables.build(shapes))
    want, got = deltas(original), deltas(conv.state_dict)
    assert want.keys() == got.keys()
    assert all(torch.allclose(got[m], want[m], atol=1e-6) for m in want)


def test_separately_trained_q_k_v_fuse_exactly_and_uncovered_rows_stay_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    base = "transformer.transformer_blocks.0.attn"
    lora = {
        f"{base}.to_q.lora_A.weight": torch.randn(2, H, generator=gen),
        f"{base}.to_q.lora_B.weight": torch.randn(H, 2, generator=gen),
        f"{base}.to_k.lora_A.weight": torch.randn(3, H, generator=gen),
        f"{base}.to_k.lora_B.weight": torch.randn(H, 3, generator=gen),
        f"{base}.to_k.alpha": torch.tensor(1.5),
    }
    conv = lk.to_comfy(lora, lk.KeyTables.build(flux2_shapes()))
    assert conv.unmatched == [] and len(conv.matched) == 5
    fused = deltas(conv.state_dict)["diffusion_model.double_blocks.0.img_attn.qkv"]
    q = lora[f"{base}.to_q.lora_B.weight"].double() @ lora[f"{base}.to_q.lora_A.weight"].double()
    k = 0.5 * lora[f"{base}.to_k.lora_B.weight"].double() @ lora[f"{base}.to_k.lora_A.weight"].double()
    assert torch.allclose(fused, torch.cat([q, k, torch.zeros(H, H, dtype=torch.float64)]), atol=1e-6)


def test_norm_out_rows_are_swapped_back() -> None:
    up, down = torch.arange(2 * H, dtype=torch.float32)[:, None], torch.ones(1, H)
    lora = {
        "transformer.norm_out.linear.lora_B.weight": up,
        "transformer.norm_out.linear.lora_A.weight": down,
    }
    conv = lk.to_comfy(lora, lk.KeyTables.build(flux2_shapes()))
    got = conv.state_dict[f"diffusion_model.final_layer.adaLN_modulation.1{UP}"]
    assert torch.equal(got, torch.cat([up[H:], up[:H]]))


def test_other_spellings_resolve() -> None:
    tables = lk.KeyTables.build(flux2_shapes())
    for name, module in [
        ("lora_transformer_single_transformer_blocks_0_attn_to_out", "single_blocks.0.linear2"),
        ("lycoris_double_blocks_0_img_mlp_0", "double_blocks.0.img_mlp.0"),
        ("base_model.model.single_transformer_blocks.0.attn.to_out", "single_blocks.0.linear2"),
        ("model.diffusion_model.txt_in", "txt_in"),
    ]:
        resolved = tables.resolve(name)
        assert resolved is not None and resolved[0] == Target(module), name
    assert lk.split_suffix("x.y.lora_A.default.weight") == ("x.y", ".lora_A.default.weight")
    assert lk.split_suffix("x.y.lora_B") == ("x.y", ".lora_B")
    assert lk.split_suffix("x.y.something") is None


def test_wrong_family_and_misfits_are_reported_not_converted() -> None:
    wan_lora = comfy_lora(wan_shapes())
    conv = lk.to_comfy(wan_lora, lk.KeyTables.build(flux2_shapes()))
    assert conv.state_dict == {} and len(conv.unmatched) == len(wan_lora)
    assert ln.guess_base(wan_lora) == "Wan"
    # LTX-2's transformer and LoRAs, and HunyuanVideo's model, by name in the messages
    ltx2 = {"audio_patchify_proj.weight": (32, 128), "transformer_blocks.0.attn1.to_q.weight": (64, 64)}
    assert ln.model_family(ltx2) == "LTX-2"
    assert ln.guess_base(["diffusion_model.transformer_blocks.0.audio_attn1.to_q.lora_A.weight"]) == "LTX-2"
    assert (
        ln.model_family({"txt_in.individual_token_refiner.blocks.0.norm1.weight": (128,)}) == "HunyuanVideo"
    )
    narrow = {f"diffusion_model.double_blocks.0.img_attn.proj{UP}": torch.ones(H + 1, 2),
              f"diffusion_model.double_blocks.0.img_attn.proj{DOWN}": torch.ones(2, H)}  # fmt: skip
    conv = lk.to_comfy(narrow, lk.KeyTables.build(flux2_shapes()))
    assert conv.state_dict == {} and len(conv.unmatched) == 2
    assert "does not fit 8 rows of double_blocks.0.img_attn.proj" in conv.problems[0]
    half = {f"diffusion_model.txt_in{UP}": torch.ones(H, 2)}
    conv = lk.to_comfy(half, lk.KeyTables.build(flux2_shapes()))
    assert conv.state_dict == {} and "only one of lora_up / lora_down" in conv.problems[0]


def test_text_encoder_keys_and_other_adapters() -> None:
    tables = lk.KeyTables.build(flux2_shapes())
    lokr = {"lora_unet_double_blocks_0_img_attn_proj.lokr_w1": torch.ones(2, 2),
            "lora_unet_double_blocks_0_img_attn_proj.lokr_w2": torch.ones(4, 4),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(4, 1)}  # fmt: skip
    conv = lk.to_comfy(lokr, tables)
    assert set(conv.state_dict) == {
        "diffusion_model.double_blocks.0.img_attn.proj.lokr_w1",
        "diffusion_model.double_blocks.0.img_attn.proj.lokr_w2",
    }
    assert list(conv.text_encoder) == ["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"]
    banded = {"transformer.transformer_blocks.0.attn.to_q.lokr_w1": torch.ones(2, 2)}
    conv = lk.to_comfy(banded, tables)
    assert conv.state_dict == {} and "only plain LoRA" in conv.problems[0]


def test_render_refuses_what_it_cannot_spell() -> None:
    with pytest.raises(ValueError, match="not a ComfyUI-format"):
        lk.render({"lora_unet_x.lora_up.weight": torch.ones(1)}, flux2_shapes(), LoraFormat.KOHYA)
    lokr = {"diffusion_model.img_in.lokr_w1": torch.ones(1)}
    with pytest.raises(ValueError, match="only LoRA layers and bias/norm offsets"):
        lk.render(lokr, flux2_shapes(), LoraFormat.DIFFUSERS)


def test_underscored_names_that_collide_are_dropped() -> None:
    table = {"a.b_c": Target("one"), "a_b.c": Target("two"), "d.e": Target("three")}
    assert ln.underscored(table) == {"d_e": Target("three")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_trained_lora_round_trips_through_diffusers_names_bit_for_bit(dtype: torch.dtype) -> None:
    """A LoRA as ComfyUI's trainer saves it (ComfyUI names, alpha 1, rank 4, bf16 or fp32), rendered in
    diffusers names (``output_lora_format: fal``) and read back, makes the very same weight changes:
    1 / rank is a power of two, so folding it into B rounds nothing. Both files load (all keys match)."""
    shapes = flux2_shapes()
    trained = {k: v.to(dtype) for k, v in comfy_lora(shapes, rank=4, alpha=1.0).items()}
    tables = lk.KeyTables.build(shapes)
    diffusers = lk.render(trained, shapes, LoraFormat.DIFFUSERS)
    assert all(
        k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in diffusers
    )
    for lora, fmt in ((trained, LoraFormat.COMFY), (diffusers, LoraFormat.DIFFUSERS)):
        conv = lk.to_comfy(lora, tables)
        assert conv.unmatched == [] and conv.problems == [] and conv.formats == {fmt}
        got, want = deltas(conv.state_dict), deltas(trained)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[m], want[m]) for m in want), fmt
    back = lk.render(lk.to_comfy(diffusers, tables).state_dict, shapes, LoraFormat.DIFFUSERS)
    assert back.keys() == diffusers.keys() and all(torch.equal(back[k], diffusers[k]) for k in back)

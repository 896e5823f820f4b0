"""A LoRA as ComfyUI's trainer saves it for each trainer family (FLUX.1, Z-Image, Qwen-Image): LoRAs on the
2-D weights, offsets of the biases (.diff_b) and of the 1-D norm weights (.diff). Rendered in diffusers'
names (the trainers' ``fal`` format) and read back by darkroom's loader, it makes the very same changes, bit
for bit: biases become PEFT's ``lora_B.bias`` (split with q/k/v, halves swapped with norm_out), norms keep
``.diff`` under the diffusers name."""

from __future__ import annotations

import pytest
import torch
from darkroom.formats import lora_keys as lk
from darkroom.formats import lora_names as ln
from darkroom.formats.arch import Shape
from darkroom.formats.lora_keys import ALPHA, DIFF, DIFF_B, DOWN, UP, LoraFormat

H = 8


def flux1() -> dict[str, Shape]:
    b, s = "double_blocks.0.", "single_blocks.0."
    return {
        "img_in.weight": (H, 16), "img_in.bias": (H,), "txt_in.weight": (H, 12), "txt_in.bias": (H,),
        "vector_in.in_layer.weight": (H, 6), "time_in.in_layer.weight": (H, 32),
        f"{b}img_mod.lin.weight": (6 * H, H), f"{b}img_mod.lin.bias": (6 * H,),
        f"{b}img_attn.qkv.weight": (3 * H, H), f"{b}img_attn.qkv.bias": (3 * H,),
        f"{b}txt_attn.qkv.weight": (3 * H, H), f"{b}txt_attn.qkv.bias": (3 * H,),
        f"{b}img_attn.proj.weight": (H, H), f"{b}img_attn.proj.bias": (H,),
        f"{b}img_mlp.0.weight": (4 * H, H), f"{b}img_mlp.0.bias": (4 * H,),
        f"{s}linear1.weight": (7 * H, H), f"{s}linear1.bias": (7 * H,),
        f"{s}linear2.weight": (H, 5 * H), f"{s}modulation.lin.weight": (3 * H, H),
        "final_layer.adaLN_modulation.1.weight": (2 * H, H), "final_layer.adaLN_modulation.1.bias": (2 * H,),
        "final_layer.linear.weight": (16, H), "final_layer.linear.bias": (16,),
    }  # fmt: skip


def zimage() -> dict[str, Shape]:
    out: dict[str, Shape] = {"cap_embedder.0.weight": (12,), "cap_embedder.1.weight": (H, 12),
                             "cap_embedder.1.bias": (H,), "x_embedder.weight": (H, 16),
                             "x_embedder.bias": (H,),
                             "final_layer.linear.weight": (16, H), "final_layer.linear.bias": (16,),
                             "final_layer.adaLN_modulation.1.weight": (H, H),
                             "t_embedder.mlp.0.weight": (H, H), "t_embedder.mlp.0.bias": (H,)}  # fmt: skip
    for block in ("layers.0.", "context_refiner.0.", "noise_refiner.0."):
        out |= {f"{block}attention.qkv.weight": (3 * H, H), f"{block}attention.out.weight": (H, H),
                f"{block}attention.q_norm.weight": (4,), f"{block}attention.k_norm.weight": (4,),
                f"{block}attention_norm1.weight": (H,), f"{block}feed_forward.w1.weight": (2 * H, H),
                f"{block}feed_forward.w2.weight": (H, 2 * H), f"{block}ffn_norm2.weight": (H,)}  # fmt: skip
    out |= {"layers.0.adaLN_modulation.0.weight": (4 * H, H), "layers.0.adaLN_modulation.0.bias": (4 * H,)}
    return out


def qwen_image() -> dict[str, Shape]:
    b = "transformer_blocks.0."
    return {
        "img_in.weight": (H, 16), "img_in.bias": (H,), "txt_norm.weight": (12,), "txt_in.weight": (H, 12),
        f"{b}img_mod.1.weight": (6 * H, H), f"{b}img_mod.1.bias": (6 * H,),
        f"{b}attn.to_q.weight": (H, H), f"{b}attn.to_q.bias": (H,), f"{b}attn.add_k_proj.weight": (H, H),
        f"{b}attn.norm_q.weight": (4,), f"{b}img_mlp.net.0.proj.weight": (4 * H, H),
        "norm_out.linear.weight": (2 * H, H), "norm_out.linear.bias": (2 * H,), "proj_out.weight": (16, H),
    }  # fmt: skip


FAMILIES = {"FLUX.1": flux1, "Z-Image": zimage, "Qwen-Image": qwen_image}


def trained(shapes: dict[str, Shape], rank: int = 4) -> dict[str, torch.Tensor]:
    """What ComfyUI's TrainLoraNode saves: alpha 1, a LoRA per 2-D weight, .diff / .diff_b per 1-D one."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        module, kind = key.rsplit(".", 1)
        name = f"diffusion_model.{module}"
        if kind == "bias":
            out[name + DIFF_B] = torch.randn(shape, generator=g)
        elif len(shape) == 1:
            out[name + DIFF] = torch.randn(shape, generator=g)
        else:
            out[name + UP] = torch.randn((shape[0], rank), generator=g)
            out[name + DOWN] = torch.randn((rank, *shape[1:]), generator=g)
            out[name + ALPHA] = torch.tensor(1.0)
    return out


def changes(comfy_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each key of the model gets added: LoRA deltas (alpha / rank applied) and offsets."""
    out: dict[str, torch.Tensor] = {}
    for key, t in comfy_sd.items():
        module = key.split(".", 1)[1]
        if key.endswith(DIFF_B):
            out[module.removesuffix(DIFF_B) + ".bias"] = t
        elif key.endswith(DIFF):
            out[module.removesuffix(DIFF) + ".weight"] = t
        elif key.endswith(UP):
            base = key.removesuffix(UP)
            down = comfy_sd[base + DOWN]
            scale = float(comfy_sd[base + ALPHA]) / down.shape[0] if base + ALPHA in comfy_sd else 1.0
            out[module.removesuffix(UP) + ".weight"] = (t.float() @ down.flatten(1).float()) * scale
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_trained_lora_round_trips_through_diffusers_names(family: str) -> None:
    shapes = FAMILIES[family]()
    assert ln.model_family(shapes) == family
    lora = trained(shapes)
    diffusers = lk.render(lora, shapes, LoraFormat.DIFFUSERS)
    assert all(k.startswith("transformer.") for k in diffusers)
    conv = lk.to_comfy(diffusers, lk.KeyTables.build(shapes))
    assert conv.unmatched == [] and conv.problems == [] and conv.formats == {LoraFormat.DIFFUSERS}
    got, want = changes(conv.state_dict), changes(lora)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6, msg=key)
    again = lk.render(conv.state_dict, shapes, LoraFormat.DIFFUSERS)
    assert again.keys() == diffusers.keys()


def test_flux1_biases_are_peft_lora_bias_split_and_swapped_like_the_weights() -> None:
    shapes = flux1()
    lora = trained(shapes)
    out = lk.render(lora, shapes, LoraFormat.DIFFUSERS)
    qkv_bias = lora["diffusion_model.double_blocks.0.img_attn.qkv.diff_b"]
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        got = out[f"transformer.transformer_blocks.0.attn.{name}.lora_B.bias"]
        assert torch.equal(got, qkv_bias[i * H : (i + 1) * H])
    mod = lora["diffusion_model.final_layer.adaLN_modulation.1.diff_b"]
    assert torch.equal(out["transformer.norm_out.linear.lora_B.bias"], torch.cat([mod[H:], mod[:H]]))
    single = out["transformer.single_transformer_blocks.0.proj_mlp.lora_B.bias"]
    assert torch.equal(single, lora["diffusion_model.single_blocks.0.linear1.diff_b"][3 * H :])


def test_zimage_and_qwen_names_follow_comfyui_s_diffusers_maps() -> None:
    z = ln.diffusers_names(zimage())
    assert z["layers.0.attention.to_k"] == ln.Target("layers.0.attention.qkv", (H, H))
    assert z["layers.0.attention.to_out.0"] == ln.Target("layers.0.attention.out")
    assert z["noise_refiner.0.attention.norm_q"] == ln.Target("noise_refiner.0.attention.q_norm")
    assert z["all_final_layer.2-1.linear"] == ln.Target("final_layer.linear")
    assert z["all_x_embedder.2-1"] == ln.Target("x_embedder")
    q = ln.diffusers_names(qwen_image())
    assert q["transformer_blocks.0.attn.to_q"] == ln.Target("transformer_blocks.0.attn.to_q")
    assert q["norm_out.linear"] == ln.Target("norm_out.linear")

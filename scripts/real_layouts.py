"""Real-size model files with random values: the released key layouts and shapes, read from ComfyUI's own
classes built on the meta device (nothing allocated), streamed to disk one tensor at a time in the
released storage dtypes (fp8 where the released file is fp8, with the legacy ``scaled_fp8`` marker and
per-layer ``scale_weight`` where it is scaled). For ``bench_cpu_real.py``: a loader's detection, its
quantisation handling and a graph's speed do not depend on the weights' values.

What differs from the released files: the values, and two stand-ins: umt5-xxl's embedded sentencepiece
model is darkroom's tiny one (its ids fit the real 256,384-row embedding), and the FLUX.1 [schnell]
diffusion model is written fp8 (the released file is bf16, 23.8 GB: more than this machine's RAM).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# key -> (shape, safetensors dtype)
Layout = dict[str, tuple[tuple[int, ...], str]]
_CHUNK_ELEMENTS = 1 << 25
_BYTES = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "U8": 1}

FLUX1_SCHNELL: dict[str, Any] = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
    "txt_ids_dims": [], "ops_bias": True, "txt_norm": False,
}  # fmt: skip
WAN22_TI2V_5B: dict[str, Any] = {
    "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 48, "dim": 3072,
    "ffn_dim": 14336, "freq_dim": 256, "text_dim": 4096, "out_dim": 48, "num_heads": 24, "num_layers": 30,
    "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}  # fmt: skip


def _shapes(module: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def diffusion(family: str, config: Mapping[str, Any], *, fp8: bool, dtype: str = "BF16") -> Layout:
    """A FLUX.1 or Wan diffusion model; fp8 for the block linears ComfyUI's own fp8 files quantise."""
    import comfy.ldm.flux.model
    import comfy.ldm.wan.model
    import comfy.ops
    import torch
    from darkroom.formats.arch import Family, quantisable

    cls = comfy.ldm.flux.model.Flux if family == "flux" else comfy.ldm.wan.model.WanModel
    model = cls(**config, device="meta", dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    kind = Family.FLUX if family == "flux" else Family.WAN
    return {
        k: (s, "F8_E4M3" if fp8 and quantisable(kind, k, s) else dtype) for k, s in _shapes(model).items()
    }


def _config(json_name: str) -> dict[str, Any]:
    from darkroom.tiny.encoders import _config as tiny_config

    config: dict[str, Any] = tiny_config(json_name)
    return config


def t5(json_name: str, *, scaled: bool) -> Layout:
    """T5-XXL (FLUX.1) or umt5-xxl (Wan) encoder as released: fp8 linear weights, the embedding, relative
    position biases and norms in fp16; ``scaled`` adds the scaled-fp8 marker and per-layer scales."""
    import comfy.ops
    import comfy.text_encoders.t5
    import torch

    model = comfy.text_encoders.t5.T5(_config(json_name), torch.float16, "meta", comfy.ops.manual_cast)
    layout: Layout = {}
    for key, shape in _shapes(model).items():
        linear = len(shape) == 2 and key.startswith("encoder.block.") and key.endswith(".weight")
        layout[key] = (shape, "F8_E4M3" if linear else "F16")
        if linear and scaled:
            layout[key.removesuffix(".weight") + ".scale_weight"] = ((), "F32")
    if scaled:
        layout["scaled_fp8"] = ((0,), "F8_E4M3")
    return layout


def clip_l() -> Layout:
    """CLIP-L's text model (FLUX.1's pooled encoder), fp16 as released."""
    import comfy.clip_model
    import comfy.ops
    import torch

    config = _config("sd1_clip_config.json")
    model = comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.manual_cast)
    return {k: (s, "F16") for k, s in _shapes(model).items()}


def flux1_ae() -> Layout:
    """FLUX.1's autoencoder (16 latent channels at /8, 128 base channels), fp32 as released."""
    import torch
    from darkroom.ops.vae import kl_autoencoder

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0}  # fmt: skip
    with torch.device("meta"):
        model = kl_autoencoder(ddconfig, embed_dim=None)
    return {k: (s, "F32") for k, s in _shapes(model).items()}


def wan22_vae() -> Layout:
    """Wan 2.2's VAE (48 latent channels, 16x spatial): the config ComfyUI's VAE detection builds, fp16."""
    import comfy.ldm.wan.vae2_2
    import torch

    with torch.device("meta"):
        model = comfy.ldm.wan.vae2_2.WanVAE(
            dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0,
        )  # fmt: skip
    return {k: (s, "F16") for k, s in _shapes(model).items()}


def umt5_spiece() -> dict[str, bytes]:
    from darkroom.tiny.encoders import spiece_model

    return {"spiece_model": spiece_model()}


# manifest name -> (layout, raw uint8 tensors stored beside it)
FILES: Mapping[str, Callable[[], tuple[Layout, dict[str, bytes]]]] = {
    "flux1-schnell": lambda: (diffusion("flux", FLUX1_SCHNELL, fp8=True), {}),
    "clip-l": lambda: (clip_l(), {}),
    "t5xxl-fp8": lambda: (t5("t5_config_xxl.json", scaled=False), {}),
    "flux1-ae": lambda: (flux1_ae(), {}),
    "wan22-ti2v-5b": lambda: (diffusion("wan", WAN22_TI2V_5B, fp8=False, dtype="F16"), {}),
    "umt5-xxl-fp8": lambda: (t5("umt5_config_xxl.json", scaled=True), umt5_spiece()),
    "wan22-vae": lambda: (wan22_vae(), {}),
}


def _header(layout: Layout, raw: Mapping[str, bytes]) -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    for key, (shape, dtype) in layout.items():
        size = math.prod(shape) * _BYTES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    for key, data in raw.items():
        header[key] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    encoded = json.dumps(header).encode()
    return encoded + b" " * (-len(encoded) % 8)


def size(layout: Layout, raw: Mapping[str, bytes] | None = None) -> int:
    """The bytes ``write`` writes for this layout."""
    raw = raw or {}
    tensors = sum(math.prod(s) * _BYTES[d] for s, d in layout.values()) + sum(len(v) for v in raw.values())
    return 8 + len(_header(layout, raw)) + tensors


def write(path: Path, layout: Layout, raw: Mapping[str, bytes] | None = None, *, seed: int = 0) -> int:
    """Stream a safetensors file of random values (weights ~N(0, 0.02), 1-d tensors near 1, scales 1),
    one tensor at a time: the bytes written."""
    import torch

    raw = raw or {}
    encoded = _header(layout, raw)
    gen = torch.Generator().manual_seed(seed)
    torch_dtypes = {"F8_E4M3": torch.float8_e4m3fn, "BF16": torch.bfloat16, "F16": torch.float16,
                    "F32": torch.float32}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, (shape, dtype) in layout.items():
            rows = shape[0] if shape else 1
            step = max(1, _CHUNK_ELEMENTS // max(1, int(torch.Size(shape[1:]).numel())))
            for start in range(0, rows, step):  # chunks along dim 0: umt5's embedding alone is 1e9 values
                part = (min(step, rows - start), *shape[1:]) if shape else ()
                if key.endswith(".scale_weight"):
                    t = torch.ones(part)
                elif len(shape) > 1:
                    t = torch.randn(part, generator=gen) * 0.02
                else:
                    t = torch.randn(part, generator=gen).abs() * 0.02 + 1
                f.write(t.to(torch_dtypes[dtype]).reshape(-1).view(torch.uint8).numpy().tobytes())
        for data in raw.values():
            f.write(data)
    return path.stat().st_size

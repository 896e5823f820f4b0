"""`bench_gpu.py --cpu-real-size`: real-size diffusion-model files on this CPU machine. Writes random-weight
files with the released key layouts and shapes (from ComfyUI's own classes on the meta device) under the
manifest's file names, streamed one tensor at a time, then in a fresh process per file loads each
through darkroom's loader (its detection at the real widths, its fp8 handling) and samples one step
at the smallest latent with random conditioning of the real widths, and prints the load time and the
peak RSS against the file's size.

What it does not do yet (issue 26): the text encoders and VAEs at real size, and each endpoint's whole
graph through the facade; only the diffusion model's loader and one step.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

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
# (manifest file, family, config, fp8 weights, latent shape, context (tokens, width), pooled width)
FILES: dict[str, tuple[str, str, dict[str, Any], bool, tuple[int, ...], tuple[int, int], int]] = {
    "flux1-schnell fp8": (
        "diffusion_models/flux1-schnell.safetensors", "flux", FLUX1_SCHNELL, True, (16, 8, 8), (16, 4096), 768
    ),
    "wan2.2-ti2v-5b bf16": (
        "diffusion_models/wan2.2_ti2v_5B_fp16.safetensors", "wan", WAN22_TI2V_5B, False, (48, 1, 4, 4),
        (16, 4096), 0,
    ),
}  # fmt: skip
_DTYPES = {"bf16": "BF16", "f8": "F8_E4M3"}


def _paths() -> None:
    from bench_gpu import import_comfy

    import_comfy(cpu=True)


def _shapes(family: str, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    import comfy.ldm.flux.model
    import comfy.ldm.wan.model
    import comfy.ops
    import torch

    cls = comfy.ldm.flux.model.Flux if family == "flux" else comfy.ldm.wan.model.WanModel
    model = cls(**config, device="meta", dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write(path: Path, family: str, config: dict[str, Any], fp8: bool) -> int:
    """Stream a safetensors file of random values, one tensor at a time: bytes written."""
    import torch
    from darkroom.formats.arch import Family, quantisable

    shapes = _shapes(family, config)
    kind = Family.FLUX if family == "flux" else Family.WAN
    dtypes = {k: "f8" if fp8 and quantisable(kind, k, s) else "bf16" for k, s in shapes.items()}
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        size = int(torch.Size(shape).numel()) * (1 if dtypes[key] == "f8" else 2)
        header[key] = {
            "dtype": _DTYPES[dtypes[key]],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape in shapes.items():
            t = torch.randn(shape, generator=gen, dtype=torch.bfloat16) * 0.02
            t = t.to(torch.float8_e4m3fn) if dtypes[key] == "f8" else (t if len(shape) > 1 else t.abs() + 1)
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


def load_and_step(path: Path, name: str) -> dict[str, Any]:
    """In this (fresh) process: darkroom's loader, then one euler step; seconds and peak RSS."""
    import comfy.sample
    import torch
    from darkroom.formats.arch import Family
    from darkroom.ops.diffusion import load_diffusion_model

    _, family, _, _, latent, context, pooled = FILES[name]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    patcher = load_diffusion_model(path, Family.FLUX if family == "flux" else Family.WAN)
    load_s = time.perf_counter() - started
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gen = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, *context, generator=gen), {"pooled_output": torch.zeros(1, pooled or 1)}]]
    noise = torch.randn(1, *latent, generator=gen)
    started = time.perf_counter()
    out = comfy.sample.sample(
        patcher,
        noise,
        1,
        1.0,
        "euler",
        "simple",
        cond,
        cond,
        torch.zeros_like(noise),
        disable_pbar=True,
        seed=1,
    )
    return {
        "load_s": round(load_s, 2), "step_s": round(time.perf_counter() - started, 2),
        "finite": bool(torch.isfinite(out).all()), "rss_before_load": base_rss,
        "peak_rss_after_load": load_rss,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip


def main() -> dict[str, Any]:
    """Every file in FILES: written, then loaded and stepped in a child; the figures by file."""
    _paths()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="darkroom-real-", dir=os.environ.get("TMPDIR")) as tmp:
        for name, (file, family, config, fp8, *_) in FILES.items():
            path = Path(tmp) / file
            started = time.perf_counter()
            size = write(path, family, config, fp8)
            write_s = time.perf_counter() - started
            print(f"{name}: wrote {file} ({size / 1e9:.2f} GB) in {write_s:.0f} s", flush=True)
            child = subprocess.run(
                [sys.executable, __file__, str(path), name], capture_output=True, text=True, timeout=1800
            )
            if child.returncode:
                results[name] = {"file_bytes": size, "failed": child.stderr[-2000:]}
            else:
                results[name] = {"file_bytes": size, "write_s": round(write_s, 1)} | json.loads(
                    child.stdout.strip().splitlines()[-1]
                )
            path.unlink()
            print(f"  {results[name]}", flush=True)
    return results


if __name__ == "__main__":  # the child: load and step one file, print its figures as JSON
    sys.path.insert(0, str(ROOT / "scripts"))
    _paths()
    print(json.dumps(load_and_step(Path(sys.argv[1]), sys.argv[2])))

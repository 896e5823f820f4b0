"""FP8 kernels in pure torch: plain and per-tensor-scaled float8_e4m3fn / float8_e5m2.

The scaled recipe and the on-disk markers follow ComfyUI v0.8.0 (QUANTIZATION.md, comfy/quant_ops.py):
`scale = amax / finfo(fp8).max`, `q = fp8(w / scale)`, `w ~= q * scale`, and a per-layer
`<layer>.comfy_quant` uint8 tensor holding `{"format": "float8_e4m3fn"}` as JSON. No ComfyUI import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch

# Elements per chunk: the float32 scratch (4 MiB) stays cache-friendly, and no full-size float32 copy
# of a weight is ever made (a 6144 x 36864 FLUX.2 weight would need 900 MB as float32).
CHUNK_ELEMS = 1 << 20

FP8_DTYPES: frozenset[torch.dtype] = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})


class Fp8Format(StrEnum):
    """An fp8 storage format, named as ComfyUI's QUANT_ALGOS names it."""

    E4M3FN = "float8_e4m3fn"
    E5M2 = "float8_e5m2"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self is Fp8Format.E4M3FN else torch.float8_e5m2

    @property
    def max_value(self) -> float:
        return float(torch.finfo(self.dtype).max)

    @classmethod
    def from_dtype(cls, dtype: torch.dtype) -> Fp8Format:
        """The format stored in `dtype`; ValueError for a non-fp8 dtype."""
        for fmt in cls:
            if fmt.dtype == dtype:
                return fmt
        raise ValueError(f"expected an fp8 dtype (float8_e4m3fn or float8_e5m2), got {dtype}")


def absmax(tensor: torch.Tensor) -> float:
    """Largest absolute value, in one pass and without an abs() temporary."""
    if tensor.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(tensor)
    return max(-float(lo), float(hi))


def scale_for(amax: float, fmt: Fp8Format) -> torch.Tensor:
    """Per-tensor scale (float32 scalar) mapping `amax` onto the format's largest value."""
    if amax == 0.0 or amax != amax:  # all zeros (or NaN, which the caller will see anyway)
        return torch.ones((), dtype=torch.float32)
    return torch.tensor(amax / fmt.max_value, dtype=torch.float32)


def fp8_scale(tensor: torch.Tensor, fmt: Fp8Format) -> torch.Tensor:
    """Per-tensor scale for `tensor` (ComfyUI's recipe: absmax / finfo(fp8).max)."""
    return scale_for(absmax(tensor), fmt)


def _chunked(src: torch.Tensor, out: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    flat_src, flat_out = src.reshape(-1), out.view(-1)
    scratch = torch.empty(min(CHUNK_ELEMS, flat_src.numel()), dtype=torch.float32)
    for start in range(0, flat_src.numel(), CHUNK_ELEMS):
        part = flat_src[start : start + CHUNK_ELEMS]
        buf = scratch[: part.numel()]
        fn(part, buf)
        flat_out[start : start + part.numel()].copy_(buf)


def quantize(
    tensor: torch.Tensor,
    fmt: Fp8Format,
    scale: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`tensor / scale` rounded to fp8 (scale None = plain cast, saturating at the format's range)."""
    if out is None:
        out = torch.empty(tensor.shape, dtype=fmt.dtype)
    if tensor.numel() == 0:
        return out
    limit = fmt.max_value
    if scale is None:

        def plain(part: torch.Tensor, buf: torch.Tensor) -> None:
            buf.copy_(part).clamp_(-limit, limit)  # fp8 has no inf: out-of-range casts become NaN

        _chunked(tensor, out, plain)
        return out
    inv = 1.0 / float(scale)

    def scaled(part: torch.Tensor, buf: torch.Tensor) -> None:
        # float32 first: torch.mul(bf16, float, out=f32) would round the product to bf16. amax * (1/scale)
        # is at most an ulp above `limit`, which still rounds to `limit`, so no clamp is needed.
        buf.copy_(part).mul_(inv)

    _chunked(tensor, out, scaled)
    return out


def quantize_scaled(tensor: torch.Tensor, fmt: Fp8Format) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled fp8: (qdata, float32 scalar scale) with `tensor ~= qdata * scale`."""
    scale = fp8_scale(tensor, fmt)
    return quantize(tensor, fmt, scale), scale


def dequantize(
    qdata: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """fp8 (optionally scaled) back to `dtype`, multiplying in float32 and rounding once."""
    if qdata.dtype not in FP8_DTYPES:
        raise ValueError(f"dequantize expects an fp8 tensor, got {qdata.dtype}")
    out = torch.empty(qdata.shape, dtype=dtype)
    factor = 1.0 if scale is None else float(scale)

    def step(part: torch.Tensor, buf: torch.Tensor) -> None:
        buf.copy_(part).mul_(factor)

    _chunked(qdata, out, step)
    return out


def comfy_quant_entry(fmt: Fp8Format, *, full_precision_mm: bool = False) -> torch.Tensor:
    """The `<layer>.comfy_quant` tensor ComfyUI's mixed_precision_ops reads (uint8 JSON bytes)."""
    conf: dict[str, Any] = {"format": fmt.value}
    if full_precision_mm:
        conf["full_precision_matrix_mult"] = True
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def parse_comfy_quant(entry: torch.Tensor) -> dict[str, Any]:
    """Decode a `comfy_quant` tensor; ValueError if it is not a JSON object."""
    conf = json.loads(entry.numpy().tobytes())
    if isinstance(conf, str):  # QUANTIZATION.md's example maps layer -> bare format string
        conf = {"format": conf}
    if not isinstance(conf, dict):
        raise ValueError(f"comfy_quant entry is not a JSON object: {conf!r}")
    return conf

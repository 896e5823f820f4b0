"""Diffusion-model checkpoints (no ComfyUI): strict key checks, stored quantisation in every form ComfyUI
v0.8.0 reads, and conversion to its current format one module at a time, quantising on load.

Stored forms: per-layer `comfy_quant` tensors, a `_quantization_metadata` JSON entry in the header,
legacy `scaled_fp8` + `scale_weight` files (comfy/utils.py convert_old_quants) and plain fp8 weights.
Quantise-on-load reads bf16 straight from the memory map in 32 MB chunks, dropping each chunk's pages
once used, so no bf16 copy of a quantised weight is ever made and the peak stays near the loaded size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from .arch import ModelFileError, Shape
from .quant import (
    FP8_DTYPES,
    Fp8Format,
    absmax,
    comfy_quant_entry,
    dequantize,
    parse_comfy_quant,
    quantize,
    quantize_scaled,
    scale_for,
)
from .safetensors_io import (
    READAHEAD_WINDOW_BYTES,
    CheckpointFormatError,
    Header,
    MappedFile,
    read_header,
    save_state_dict,
)

__all__ = [  # read_header / save_state_dict / CheckpointFormatError re-exported for callers of this layer
    "Checkpoint",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "LoadPlan",
    "StoredQuant",
    "WeightDtype",
    "check_keys",
    "load_state_dict",
    "quantise_state_dict",
    "read_header",
    "save_state_dict",
]

_FLOATS = frozenset({torch.bfloat16, torch.float16, torch.float32, torch.float64})
LEGACY_MARKER = "scaled_fp8"


class CheckpointMismatchError(ModelFileError):
    """The file's tensors do not match the model built from its inferred config."""

    code = "checkpoint_mismatch"

    def __init__(
        self, source: str, family: str, missing: list[str], unexpected: list[str], wrong_shape: list[str]
    ) -> None:
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape

        def few(items: list[str]) -> str:
            return ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")

        parts = [f"{len(missing)} missing keys" + (f" (e.g. {few(missing)})" if missing else "")]
        parts.append(
            f"{len(unexpected)} unexpected keys" + (f" (e.g. {few(unexpected)})" if unexpected else "")
        )
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {few(wrong_shape)})")
        super().__init__(
            f"{source}: does not match the {family} model it describes: {'; '.join(parts)}. The file is "
            f"truncated, damaged or another model's; re-download it, or pick the loader for its family."
        )


class WeightDtype(StrEnum):
    """How a loader stores weights in memory (the node's `weight_dtype` choices)."""

    DEFAULT = "default"
    BF16 = "bf16"
    FP8_E4M3FN = "fp8_e4m3fn"
    FP8_E5M2 = "fp8_e5m2"
    FP8_E4M3FN_SCALED = "fp8_e4m3fn_scaled"
    FP8_E5M2_SCALED = "fp8_e5m2_scaled"

    @property
    def fp8(self) -> Fp8Format | None:
        if self.value.startswith("fp8_e4m3fn"):
            return Fp8Format.E4M3FN
        return Fp8Format.E5M2 if self.value.startswith("fp8_e5m2") else None

    @property
    def scaled(self) -> bool:
        return self.value.endswith("_scaled")


@dataclass(frozen=True)
class StoredQuant:
    """How one linear layer's weight is stored quantised in the file (keys are file keys)."""

    fmt: Fp8Format
    scale_key: str | None = None
    input_scale_key: str | None = None
    full_precision_mm: bool = False
    legacy: bool = False


@dataclass(frozen=True)
class LoadPlan:
    """What to produce: the in-memory weight dtype, and which (logical key, shape) weights fp8 may hold."""

    weight_dtype: WeightDtype
    quantisable: Callable[[str, Shape], bool]


def check_keys(source: str, family: str, expected: Mapping[str, Shape], found: Mapping[str, Shape]) -> None:
    """Raise CheckpointMismatchError unless `found` has exactly the `expected` keys and shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k}: file {list(found[k])} vs model {list(expected[k])}"
        for k in set(expected) & set(found)
        if tuple(found[k]) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(source, family, missing, unexpected, wrong)


class Checkpoint:
    """An open safetensors diffusion model: logical keys (prefix and quantisation side-keys removed),
    stored quantisation per layer, and conversion to ComfyUI's current format one module at a time."""

    def __init__(self, header: Header, prefix: str = "") -> None:
        self.header, self.prefix = header, prefix
        self.file = MappedFile(header)
        try:
            self.quant = self._stored_quant()  # logical layer -> StoredQuant
        except BaseException:
            self.close()
            raise
        side = {k for q in self.quant.values() for k in (q.scale_key, q.input_scale_key) if k}
        side |= {prefix + LEGACY_MARKER} | {f"{prefix}{layer}.comfy_quant" for layer in self.quant}
        self.keys = {k[len(prefix) :]: k for k in header.tensors if k.startswith(prefix) and k not in side}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def source(self) -> str:
        return str(self.header.path)

    def shapes(self) -> dict[str, Shape]:
        """Logical key -> shape: what the model's state dict must hold."""
        return {k: self.header.tensors[f].shape for k, f in self.keys.items()}

    def _quantise(self, key: str, fmt: Fp8Format, scaled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Quantise a float tensor straight from the map, releasing each chunk once used (a scaled tensor
        takes two passes: absmax, then quantise). Same bytes as quant.quantize_scaled / quantize."""
        entry = self.header.tensors[key]
        src, chunks, scale = self.file.view(key).reshape(-1), entry.chunks(), None
        if scaled:
            amax = 0.0
            for start, n in chunks:
                amax = max(amax, absmax(src[start : start + n]))
                if (start, n) != chunks[-1]:
                    self.file.release(key, start, n)
            scale = scale_for(amax, fmt)
            chunks = chunks[::-1]  # start the second pass on the chunk still mapped: no re-faulting it
        out = torch.empty(src.numel(), dtype=fmt.dtype)
        for start, n in chunks:
            quantize(src[start : start + n], fmt, scale, out=out[start : start + n])
            self.file.release(key, start, n)
        return out.reshape(entry.shape), scale

    def _declared(self) -> dict[str, dict[str, Any]]:
        meta = self.header.metadata.get("_quantization_metadata")
        if meta is not None:
            layers = json.loads(meta).get("layers", {})
            return {k: v if isinstance(v, dict) else {"format": v} for k, v in layers.items()}
        found = (k for k in self.header.tensors if k.endswith(".comfy_quant"))
        return {k[: -len(".comfy_quant")]: parse_comfy_quant(self.file.read(k)) for k in found}

    def _stored_quant(self) -> dict[str, StoredQuant]:
        tensors, prefix, out = self.header.tensors, self.prefix, {}
        for layer, conf in self._declared().items():
            try:
                fmt = Fp8Format(str(conf.get("format")))
            except ValueError:
                raise CheckpointFormatError(
                    f"{self.source}: layer {layer!r} uses quantisation {conf.get('format')!r}; only fp8 "
                    f"(float8_e4m3fn, float8_e5m2) is served, load it with ComfyUI's UNETLoader"
                ) from None
            scale, inp, weight = (
                f"{layer}.weight_scale",
                f"{layer}.input_scale",
                tensors.get(f"{layer}.weight"),
            )
            if weight is not None and weight.dtype != fmt.dtype:
                raise CheckpointFormatError(
                    f"{self.source}: layer {layer!r} is declared {fmt.value} but stored as {weight.dtype}; "
                    f"the file is inconsistent, re-export it"
                )
            out[layer.removeprefix(prefix)] = StoredQuant(
                fmt, scale if scale in tensors else None, inp if inp in tensors else None,
                bool(conf.get("full_precision_matrix_mult", False)),
            )  # fmt: skip
        marker = tensors.get(prefix + LEGACY_MARKER)
        for key, entry in tensors.items():
            layer = key[: -len(".weight")]
            if not key.endswith(".weight") or len(entry.shape) != 2 or entry.dtype not in FP8_DTYPES:
                continue
            if marker is not None and f"{layer}.scale_weight" in tensors:
                inp = f"{layer}.scale_input"
                out[layer.removeprefix(prefix)] = StoredQuant(
                    Fp8Format.from_dtype(entry.dtype), f"{layer}.scale_weight",
                    inp if inp in tensors else None, math.prod(marker.shape) == 2, legacy=True,
                )  # fmt: skip
            else:
                out.setdefault(layer.removeprefix(prefix), StoredQuant(Fp8Format.from_dtype(entry.dtype)))
        return out

    def check_weight_dtype(self, weight_dtype: WeightDtype) -> None:
        """Reject re-quantising fp8 weights into the other fp8 format (rounding twice, silently)."""
        target = weight_dtype.fp8
        stored = sorted({q.fmt.value for q in self.quant.values()})
        if target is not None and stored and stored != [target.value]:
            raise CheckpointFormatError(
                f"{self.source}: weights are stored as {', '.join(stored)}; "
                f"converting them to {target.value} "
                f"would round twice. Choose weight_dtype 'default', 'bf16' or the stored fp8 format"
            )

    def output_summary(self, plan: LoadPlan) -> tuple[int, dict[torch.dtype, int]]:
        """(layers loading quantised, element count per dtype of the other tensors); reads no data."""
        quantised, floats = 0, dict[torch.dtype, int]()
        for key, fkey in self.keys.items():
            entry = self.header.tensors[fkey]
            layer, _, name = key.rpartition(".")
            stays_fp8 = name == "weight" and layer in self.quant and plan.weight_dtype is not WeightDtype.BF16
            if stays_fp8 or self._quantises(key, entry.dtype, plan):
                quantised += 1
                continue
            upcast = plan.weight_dtype is WeightDtype.BF16 or entry.dtype in FP8_DTYPES
            dtype = torch.bfloat16 if upcast else entry.dtype
            floats[dtype] = floats.get(dtype, 0) + math.prod(entry.shape)
        return quantised, floats

    def iter_modules(self, plan: LoadPlan) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """Yield (module path, {param name: tensor}) in file order, converted to ComfyUI's current format."""
        self.check_weight_dtype(plan.weight_dtype)
        modules: dict[str, list[str]] = {}
        for key in sorted(self.keys, key=lambda k: self.header.tensors[self.keys[k]].offset):
            module, _, name = key.rpartition(".")
            modules.setdefault(module, []).append(name)
        for module, names in modules.items():
            # From a cold page cache the disk then reads on while this module converts.
            entries = [self.header.tensors[self.keys[f"{module}.{n}" if module else n]] for n in names]
            end = max(e.offset + e.nbytes for e in entries)
            self.file.prefetch(entries[0].offset, end + READAHEAD_WINDOW_BYTES)
            out: dict[str, torch.Tensor] = {}
            for name in names:
                out |= self._convert(module, name, plan)
            yield module, out

    def _convert(self, module: str, name: str, plan: LoadPlan) -> dict[str, torch.Tensor]:
        key = f"{module}.{name}" if module else name
        fkey = self.keys[key]
        entry, target = self.header.tensors[fkey], plan.weight_dtype
        stored = self.quant.get(module) if name == "weight" else None
        if stored is not None:
            return self._convert_stored_fp8(fkey, stored, target)
        if target.fp8 is not None and self._quantises(key, entry.dtype, plan):
            weight, scale = self._quantise(fkey, target.fp8, target.scaled)
            return _fp8_dict(weight, scale, target.fp8)
        upcast = entry.dtype in FP8_DTYPES or (target is WeightDtype.BF16 and entry.dtype in _FLOATS)
        return {name: self.file.read(fkey, torch.bfloat16 if upcast else None)}

    def _quantises(self, key: str, dtype: torch.dtype, plan: LoadPlan) -> bool:
        """Whether a stored float tensor is quantised on load under `plan`."""
        entry = self.header.tensors[self.keys[key]]
        return plan.weight_dtype.fp8 is not None and dtype in _FLOATS and plan.quantisable(key, entry.shape)

    def _convert_stored_fp8(
        self, fkey: str, stored: StoredQuant, target: WeightDtype
    ) -> dict[str, torch.Tensor]:
        scale = self.file.read(stored.scale_key, torch.float32) if stored.scale_key else None
        if target is WeightDtype.BF16:
            out = {"weight": dequantize(self.file.view(fkey), scale, torch.bfloat16)}
            self.file.release(fkey)
            return out
        out = _fp8_dict(self.file.read(fkey), scale, stored.fmt, full_precision_mm=stored.full_precision_mm)
        if stored.input_scale_key:
            inp = self.file.read(stored.input_scale_key, torch.float32)
            if not (stored.legacy and float(inp.reshape(-1)[0]) == 1.0):  # as convert_old_quants drops it
                out["input_scale"] = inp
        return out


def _fp8_dict(
    weight: torch.Tensor, scale: torch.Tensor | None, fmt: Fp8Format, *, full_precision_mm: bool = False
) -> dict[str, torch.Tensor]:
    """A linear layer in ComfyUI's mixed-precision form (plain fp8 = scale 1)."""
    return {
        "weight": weight,
        "weight_scale": scale if scale is not None else torch.ones((), dtype=torch.float32),
        "comfy_quant": comfy_quant_entry(fmt, full_precision_mm=full_precision_mm),
    }


def quantise_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    fmt: Fp8Format,
    *,
    scaled: bool,
    quantisable: Callable[[str, Shape], bool],
) -> dict[str, torch.Tensor]:
    """A float state dict as an fp8 file's tensors (scaled: ComfyUI's current comfy_quant format)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight") and tensor.dtype in _FLOATS and quantisable(key, tuple(tensor.shape)):
            layer = key[: -len(".weight")]
            if scaled:  # ComfyUI's current format; a plain fp8 file stores the bare weight
                weight, scale = quantize_scaled(tensor, fmt)
                out |= {f"{layer}.{name}": t for name, t in _fp8_dict(weight, scale, fmt).items()}
            else:
                out[key] = quantize(tensor, fmt)
        else:
            out[key] = tensor
    return out


def load_state_dict(path: Path, plan: LoadPlan, prefix: str = "") -> dict[str, torch.Tensor]:
    """Whole converted state dict (tools and tests; the model loader streams modules instead)."""
    out: dict[str, torch.Tensor] = {}
    with Checkpoint(read_header(path), prefix) as ckpt:
        for module, tensors in ckpt.iter_modules(plan):
            out |= {f"{module}.{name}" if module else name: t for name, t in tensors.items()}
    return out

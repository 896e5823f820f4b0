"""Weighted blends of diffusion models of one family (FLUX, Wan or SD3), served like any loaded model.

Every file is checked from its header first (family, identical keys and shapes; the first mismatching key
is named with both files). The blend is then computed tensor by tensor in float32 (fp8 layers dequantised)
and streamed into a temporary safetensors file, which our loader (diffusion.py) reads like any other, so
every weight_dtype, the strict key checks and the config inference apply unchanged and only one tensor
per input is ever held besides the model. The result is cached by (files, mtimes, sizes, weights, dtype):
a repeated blend costs a few stat() calls.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..formats.arch import ArchConfig, Family, ModelFileError, Shape, find_prefix, infer
from ..formats.checkpoint import Checkpoint, WeightDtype, read_header
from ..formats.quant import dequantize
from .diffusion import load_diffusion_model

log = logging.getLogger(__name__)

_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


class BlendMismatchError(ModelFileError):
    """Models that cannot be blended: another variant, or different tensor names or shapes."""

    code = "blend_mismatch"


@dataclass(frozen=True)
class BlendInput:
    """One file of a blend and its normalised weight."""

    path: Path
    weight: float


def _first_mismatch(a: dict[str, Shape], b: dict[str, Shape], name_a: str, name_b: str) -> str | None:
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            has, lacks = (name_a, name_b) if key in a else (name_b, name_a)
            return f"tensor {key!r} is in {has} but not in {lacks}"
        if tuple(a[key]) != tuple(b[key]):
            return f"tensor {key!r} is {list(a[key])} in {name_a} but {list(b[key])} in {name_b}"
    return None


def check_compatible(inputs: list[BlendInput], family: Family) -> ArchConfig:
    """Header-only: every file is a `family` model of the first file's variant with identical tensors."""
    first: tuple[Path, ArchConfig, dict[str, Shape]] | None = None
    for item in inputs:
        header = read_header(item.path)
        with Checkpoint(header, find_prefix(header.tensors, family, str(item.path))) as ckpt:
            shapes = ckpt.shapes()
        config = infer(family, shapes, str(item.path))
        if first is None:
            first = (item.path, config, shapes)
            continue
        path, ref, ref_shapes = first
        problem = _first_mismatch(ref_shapes, shapes, path.name, item.path.name)
        if problem is None and ref.variant != config.variant:
            problem = f"{path.name} is {ref.variant}, {item.path.name} is {config.variant}"
        if problem:
            raise BlendMismatchError(
                f"cannot blend {path} and {item.path}: {problem}. Blend only models of one architecture "
                f"and size (fine-tunes of the same base)."
            )
    assert first is not None, "check_compatible needs at least one input"
    return first[1]


def _read_float(ckpt: Checkpoint, key: str) -> torch.Tensor:
    """One logical tensor as float32, fp8 layers dequantised with their stored scale."""
    module, _, name = key.rpartition(".")
    stored = ckpt.quant.get(module) if name == "weight" else None
    if stored is None:
        return ckpt.file.read(ckpt.keys[key], torch.float32)
    scale = ckpt.file.read(stored.scale_key, torch.float32) if stored.scale_key else None
    return dequantize(ckpt.file.view(ckpt.keys[key]), scale, torch.float32)


def _out_dtype(ckpt: Checkpoint, key: str) -> torch.dtype:
    dtype = ckpt.header.tensors[ckpt.keys[key]].dtype
    return dtype if dtype in _SAFETENSORS_DTYPES else torch.bfloat16  # fp8 layers are blended in bf16


def _merged(ckpts: list[Checkpoint], weights: list[float]) -> Iterator[tuple[str, torch.Tensor]]:
    for key in sorted(ckpts[0].keys):
        total = _read_float(ckpts[0], key).mul_(weights[0])
        for ckpt, weight in zip(ckpts[1:], weights[1:], strict=True):
            total.add_(_read_float(ckpt, key), alpha=weight)
        yield key, total.to(_out_dtype(ckpts[0], key))


def _header(ckpt: Checkpoint, metadata: dict[str, str]) -> bytes:
    """The output header: every tensor in sorted key order, as _merged yields them."""
    doc: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key in sorted(ckpt.keys):
        entry, dtype = ckpt.header.tensors[ckpt.keys[key]], _out_dtype(ckpt, key)
        size = dtype.itemsize * int(torch.Size(entry.shape).numel())
        doc[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(entry.shape)}
        doc[key]["data_offsets"] = [offset, offset + size]
        offset += size
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # 8-byte aligned data: tensor views need no copy


def write_blend(inputs: list[BlendInput], family: Family, out: Path) -> None:
    """Stream the weighted sum of `inputs` (zero weights skipped) into a safetensors file at `out`."""
    used = [i for i in inputs if i.weight > 0]
    metadata = {"darkroom_blend": json.dumps([[str(i.path), i.weight] for i in used])}
    with ExitStack() as stack:
        ckpts = []
        for item in used:
            parsed = read_header(item.path)
            prefix = find_prefix(parsed.tensors, family, str(item.path))
            ckpts.append(stack.enter_context(Checkpoint(parsed, prefix)))
        header = _header(ckpts[0], metadata)
        with out.open("wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            for _, tensor in _merged(ckpts, [i.weight for i in used]):
                f.write(tensor.contiguous().view(torch.uint8).numpy().data)


CacheKey = tuple[Any, ...]


@dataclass
class BlendCache:
    """The last `max_entries` blends, with counters the tests read."""

    max_entries: int = 1
    builds: int = 0
    hits: int = 0
    _entries: OrderedDict[CacheKey, Any] = field(default_factory=OrderedDict)

    def get(self, key: CacheKey, build: Callable[[], Any]) -> Any:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self.builds += 1
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


CACHE = BlendCache()


def cache_key(inputs: list[BlendInput], family: Family, weight_dtype: WeightDtype) -> CacheKey:
    """What a blend depends on: the files (path, mtime, size), weights, family and weight dtype."""
    files = []
    for item in inputs:
        st = item.path.stat()
        files.append((str(item.path.resolve()), st.st_mtime_ns, st.st_size, item.weight))
    return (family.value, weight_dtype.value, tuple(files))


def _build(inputs: list[BlendInput], family: Family, weight_dtype: WeightDtype, work_dir: Path) -> Any:
    used = [i for i in inputs if i.weight > 0]
    if len(used) == 1:  # one model carries all the weight: it is the blend, load it as it is
        return load_diffusion_model(used[0].path, family, weight_dtype=weight_dtype)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f"blend-{os.getpid()}-{uuid.uuid4().hex}.safetensors"
    try:
        write_blend(inputs, family, tmp)
        return load_diffusion_model(tmp, family, weight_dtype=weight_dtype)  # weights are copied in
    finally:
        tmp.unlink(missing_ok=True)


def blend_models(
    inputs: list[BlendInput], family: Family, *, weight_dtype: WeightDtype, work_dir: Path,
    cache: BlendCache | None = None,
) -> Any:  # fmt: skip
    """A ModelPatcher of the weighted blend of `inputs` (weights normalised), cached (default: CACHE)."""
    key = cache_key(inputs, family, weight_dtype)

    def build() -> Any:
        check_compatible(inputs, family)
        log.info(
            "blending %s as %s", ", ".join(f"{i.path.name} x {i.weight:.3g}" for i in inputs), weight_dtype
        )
        return _build(inputs, family, weight_dtype, work_dir)

    return (cache or CACHE).get(key, build)

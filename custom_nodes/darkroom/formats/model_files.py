"""Checks the encoder and VAE loaders share: does a model file fit what it is loaded as?

Errors name the file, what was expected, the missing/unexpected key counts with examples, and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TypeVar

import safetensors
import torch

from .arch import ModelFileError

# Real tensors when loading, meta tensors (shapes only) when inspecting headers.
StateDict = dict[str, torch.Tensor]
E = TypeVar("E", bound=Enum)
# Companions of quantised weights (comfy/ops.py mixed_precision_ops consumes them while loading).
QUANT_SUFFIXES = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale", "scaled_fp8")


class ModelFileMismatchError(ModelFileError):
    """A model file does not fit what it is loaded as: names the file, what was expected and the fix."""

    code = "model_file_mismatch"

    def __init__(
        self,
        path: Path,
        problem: str,
        *,
        expected: str,
        fix: str,
        missing: Sequence[str] | None = None,
        unexpected: Sequence[str] | None = None,
    ) -> None:
        self.path, self.expected = path, expected
        self.missing, self.unexpected = list(missing or []), list(unexpected or [])
        counts = ""
        if missing is not None or unexpected is not None:
            counts = (
                f"; missing keys: {len(self.missing)}{_examples(self.missing)}, "
                f"unexpected keys: {len(self.unexpected)}{_examples(self.unexpected)}"
            )
        super().__init__(f"{path}: {problem} (expected {expected}{counts}). {fix}")


def _examples(keys: Sequence[str]) -> str:
    return f" (e.g. {', '.join(keys[:3])})" if keys else ""


def parse_enum(enum_type: type[E], value: object, what: str) -> E:
    """The member of `enum_type` named by `value`, or a ValueError listing the allowed values."""
    try:
        return enum_type(value)
    except ValueError:
        allowed = " | ".join(str(m.value) for m in enum_type)
        raise ValueError(f"unknown {what} {value!r}: expected one of {allowed}") from None


def check_keys(
    path: Path,
    missing: Sequence[str],
    unexpected: Sequence[str],
    *,
    expected: str,
    fix: str,
    tolerated: frozenset[str] = frozenset(),
) -> None:
    """Raise ModelFileMismatchError when a load left keys missing or unused (quantisation aside)."""
    missing = sorted(k for k in missing if k not in tolerated and not k.endswith(QUANT_SUFFIXES))
    unexpected = sorted(k for k in unexpected if k not in tolerated and not k.endswith(QUANT_SUFFIXES))
    if missing or unexpected:
        problem = "the weights do not match the model built from them"
        raise ModelFileMismatchError(
            path, problem, expected=expected, fix=fix, missing=missing, unexpected=unexpected
        )


def read_shapes(path: Path) -> StateDict | None:
    """A file's tensors as meta tensors (names and shapes from the header alone); None if not safetensors."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}  # noqa: SIM118

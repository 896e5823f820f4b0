"""Seeded noise that every machine computes bit for bit, so a tiny model's bytes match the manifest.

`torch.randn` is not such a source: its CPU kernel depends on the instruction set (the vectorised
Box-Muller of the AVX2 and AVX-512 builds rounds differently from the scalar one that ARM and
`ATEN_CPU_CAPABILITY=default` run), and 35 of the 38 tiny files came out different there. Here the
randomness is integers from torch's Mersenne Twister, the same everywhere, and the shaping is integer
arithmetic and one correctly rounded conversion: an Irwin-Hall sum of four uniforms, centred and scaled
to unit variance (bounded at +-2*sqrt(3), close enough to a normal for random weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_BITS = 24
_TERMS = 4


def normal(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """float32 values of mean 0 and variance 1, a function of `seed` and `shape` alone."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, 1 << _BITS, (_TERMS, *shape), generator=gen, dtype=torch.int64)
    # 2 * sum - TERMS * (2^BITS - 1): an exact integer with mean 0 and variance TERMS * (4^BITS - 1) / 3
    centred = 2 * draws.sum(dim=0) - _TERMS * ((1 << _BITS) - 1)
    return centred.to(torch.float32) * (math.sqrt(3 / _TERMS) / (1 << _BITS))

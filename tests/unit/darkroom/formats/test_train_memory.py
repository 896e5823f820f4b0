"""train_memory.py: the estimate of a LoRA training run's memory, and the refusal it leads to."""

from __future__ import annotations

import pytest
from darkroom.formats.train_memory import GIB, OVERHEAD, TrainingRun, estimate, refusal

# FLUX.2 [dev]: 32 B parameters, hidden size 6144, fp8 base weights, 1024 px (64 x 64 latent tokens).
FLUX2 = TrainingRun(parameters=32_000_000_000, width=6144, weight_bytes=1, rank=16, batch=1,
                    tokens_per_image=4096)  # fmt: skip


def test_each_part_follows_its_formula() -> None:
    run = TrainingRun(
        parameters=12 * 64 * 64 * 10, width=64, weight_bytes=2, rank=4, batch=2, tokens_per_image=100
    )
    needed = estimate(run)
    assert needed.weights_bytes == run.parameters * 2
    assert needed.adapters_bytes == 2 * 4 * run.parameters / 64 * 4 * 2  # 2rd per d^2, 4 copies, bf16
    assert needed.activations_bytes == 2 * 100 * 64 * 2 * (10 + 24)  # 10 blocks kept, one recomputed
    assert needed.total_bytes == pytest.approx(
        OVERHEAD * (needed.weights_bytes + needed.adapters_bytes + needed.activations_bytes)
    )


def test_flux2_dev_at_1024_px_fits_an_80_gb_gpu_in_fp8_but_not_at_4_mpx_batch_4() -> None:
    assert 35 * GIB < estimate(FLUX2).total_bytes < 60 * GIB
    assert refusal(FLUX2, 80e9, "GPU (cuda:0)") is None
    big = TrainingRun(**{**FLUX2.__dict__, "tokens_per_image": 4 * 4096, "batch": 4, "rank": 128})
    reason = refusal(big, 80e9, "GPU (cuda:0)")
    assert reason is not None and "does not fit in the worker's GPU (cuda:0)" in reason
    assert "rank 128, batch 4 and 16384 latent tokens" in reason and "74.51 GiB are available" in reason


def test_the_estimate_grows_with_rank_resolution_batch_and_without_checkpointing() -> None:
    base = estimate(FLUX2).total_bytes
    for change in ({"rank": 64}, {"tokens_per_image": 16384}, {"batch": 2}, {"gradient_checkpointing": False},
                   {"weight_bytes": 2}):  # fmt: skip
        assert estimate(TrainingRun(**{**FLUX2.__dict__, **change})).total_bytes > base, change

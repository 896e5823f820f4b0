"""The worker speed settings on a real (tiny) model in-process: fp8 matmul off makes every fp8 layer
compute in full precision; torch.compile (the `eager` backend here: dynamo traces the model as on a GPU,
without inductor's C++ build) gives the same samples, and the first call and each recompile on a new
shape are logged (opt-in: ~30 s of tracing on a 2-core CPU)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.model_management
import comfy.sample
import pytest
import torch
from darkroom.formats import arch
from darkroom.ops import diffusion, speed


def _sample(patcher: object, size: int) -> torch.Tensor:
    context = torch.randn(1, 8, 192, generator=torch.Generator().manual_seed(2))
    cond = [[context, {"pooled_output": torch.zeros(1, 64)}]]
    latent = torch.zeros(1, 128, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    return comfy.sample.sample(
        patcher, noise, 2, 1.0, "euler", "simple", cond, cond, latent, disable_pbar=True, seed=1
    )


def test_fp8_matmul_off_computes_every_fp8_layer_in_full_precision(models_dir: Path) -> None:
    path = models_dir / "diffusion_models" / "tiny" / "flux2-fp8_e4m3fn.safetensors"
    plain = diffusion.load_diffusion_model(path, arch.Family.FLUX)
    fp8_layers = [m for m in plain.model.diffusion_model.modules() if getattr(m, "layout_type", None)]
    fp8_compute = comfy.model_management.supports_fp8_compute(plain.load_device)
    assert fp8_layers and all(m._full_precision_mm is not fp8_compute for m in fp8_layers)  # noqa: SLF001
    for layer in fp8_layers:  # as loaded on an fp8-capable GPU: off must switch every layer back
        layer._full_precision_mm = False  # noqa: SLF001
    speed.apply_speed(plain, "flux2", {"DARKROOM_FP8_MATMUL": "off"})
    assert all(m._full_precision_mm for m in fp8_layers)  # noqa: SLF001


@pytest.mark.skipif(
    not os.environ.get("DARKROOM_SLOW_TESTS"),
    reason="torch.compile traces for ~30 s on a 2-core CPU: set DARKROOM_SLOW_TESTS=1 to run it",
)
def test_torch_compile_gives_the_same_samples_and_logs_compiles(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = models_dir / "diffusion_models" / "tiny" / "flux2-bf16.safetensors"
    expected = _sample(diffusion.load_diffusion_model(path, arch.Family.FLUX), 4)
    monkeypatch.setenv("DARKROOM_TORCH_COMPILE", "eager")
    caplog.set_level(logging.INFO, logger=speed.__name__)
    compiled = diffusion.load_diffusion_model(path, arch.Family.FLUX)
    assert torch.allclose(_sample(compiled, 4), expected, atol=1e-4)
    logged = [r.getMessage() for r in caplog.records if "torch.compile: " in r.getMessage()]
    assert logged and "torch.compile: compiled flux2-bf16.safetensors for input (1, 128, 4, 4)" in logged[0]
    _sample(compiled, 6)
    logged = [r.getMessage() for r in caplog.records if "torch.compile: " in r.getMessage()]
    assert "recompiled" in logged[-1] and "(1, 128, 6, 6)" in logged[-1]

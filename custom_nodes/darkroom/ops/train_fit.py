"""The up-front memory check of a training run (``formats/train_memory.py``'s estimate) on the model and
latents the trainer got, against the worker device's total memory (on CPU: the RAM), or a lower limit
the facade sets (``DARKROOM_TRAIN_DEVICE_MEMORY_GB``). Runs before the trainer moves anything to the
device; a refusal is a ValueError, which the facade answers as a 422 (the trainer is a user-input node).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import comfy.model_management
import torch

from ..formats.train_memory import GIB, TrainingRun, refusal

_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _width(model: torch.nn.Module) -> int:
    """The hidden size: the most common input width of the model's linear layers."""
    widths = Counter(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return widths.most_common(1)[0][0] if widths else 1


def _tokens_per_image(latents: list[Any], model: torch.nn.Module) -> int:
    """The largest latent's patches (the model's ``patch_size``, 2 where it has none)."""
    patch = getattr(model, "patch_size", 2)
    patch_area = patch[-1] * patch[-2] if isinstance(patch, (tuple, list)) else patch * patch
    sizes = []
    for latent in latents:
        samples = latent["samples"] if isinstance(latent, dict) else latent
        frames = samples.shape[-3] if samples.ndim == 5 else 1
        sizes.append(frames * samples.shape[-2] * samples.shape[-1] // max(patch_area, 1))
    return max(sizes, default=1)


def check_fits(inputs: dict[str, Any], limit_gb: float) -> None:
    """ValueError when the run the trainer's ``inputs`` (ComfyUI's input lists) describe does not fit."""
    diffusion_model = inputs["model"][0].model.diffusion_model
    parameters = [p for p in diffusion_model.parameters()]
    count = sum(p.numel() for p in parameters)
    run = TrainingRun(
        parameters=count,
        width=_width(diffusion_model),
        weight_bytes=sum(p.numel() * p.element_size() for p in parameters) / max(count, 1),
        rank=int(inputs["rank"][0]),
        batch=int(inputs["batch_size"][0]),
        tokens_per_image=_tokens_per_image(inputs["latents"], diffusion_model),
        training_bytes=_BYTES.get(str(inputs["training_dtype"][0]), 4),
        lora_bytes=_BYTES.get(str(inputs["lora_dtype"][0]), 4),
        gradient_checkpointing=bool(inputs["gradient_checkpointing"][0]),
    )
    device = comfy.model_management.get_torch_device()
    total_bytes = float(comfy.model_management.get_total_memory(device))
    where = "CPU's memory" if device.type == "cpu" else f"GPU ({device})"
    if limit_gb > 0 and limit_gb * GIB < total_bytes:
        total_bytes, where = limit_gb * GIB, f"{where} as limited by DARKROOM_TRAIN_DEVICE_MEMORY_GB"
    reason = refusal(run, total_bytes, where)
    if reason is not None:
        raise ValueError(reason)

"""How many times each sampling run evaluated the diffusion model, and how many of the sampler's model
calls a step cache (ComfyUI's EasyCache or LazyCache, behind fal's ``acceleration``) answered instead.

darkroom's loaders give every diffusion model they build three wrappers (``count_evaluations``); added
at load, they come first in each wrapper list, so they sit outside any step cache added later:

- OUTER_SAMPLE: for the run, a forward hook on a leaf module of the diffusion model (its first module
  with weights: the input embedding, which every forward pass runs) counts the passes that really ran;
  at the end the totals go to the worker's log and, as a ``darkroom.evaluations`` message, to the
  WebSocket clients (the facade adds them to the response's timings and the request's logs).
- PREDICT_NOISE: one sampler model call (cond and uncond together): evaluated if the hook fired inside
  it, reused if not (a step cache returned its cached change; both caches skip whole calls).

The wrappers only count: a run's numbers and bytes are those it has without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import WrappersMP
from comfy_execution.utils import get_executing_context

log = logging.getLogger(__name__)

KEY = "darkroom.evaluations"  # the wrappers' key, the transformer_options entry and the message type
_CACHE_ENTRY = "easycache"  # where ComfyUI's EasyCache and LazyCache keep their state
# Told of every run's totals (a dict: prompt_id, node, evaluated, reused, forward_passes, cache).
REPORTERS: list[Callable[[dict[str, Any]], None]] = []


@dataclass
class Tally:
    forward_passes: int = 0  # the leaf module's runs
    evaluated: int = 0  # sampler model calls that ran the model
    reused: int = 0  # sampler model calls a step cache answered


def count_evaluations(patcher: ModelPatcher) -> ModelPatcher:
    """Give a freshly loaded diffusion model the counting wrappers (before any clone of it exists)."""
    patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample)
    patcher.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, _predict_noise)
    return patcher


def leaf_module(model: torch.nn.Module) -> torch.nn.Module:
    """The diffusion model's first module without children that holds weights: its input embedding in
    every family darkroom serves (FLUX's img_in, Wan's patch_embedding), run once per forward pass."""
    for module in model.modules():
        if not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False)):
            return module
    raise ValueError(f"{type(model).__name__} has no module with weights")


def _outer_sample(executor: Any, *args: Any, **kwargs: Any) -> Any:
    guider = executor.class_obj
    tally = Tally()
    guider.model_options["transformer_options"][KEY] = tally

    def forward_pass(*_: Any) -> None:
        tally.forward_passes += 1

    handle = leaf_module(guider.model_patcher.model.diffusion_model).register_forward_hook(forward_pass)
    cache = guider.model_options["transformer_options"].get(_CACHE_ENTRY)
    try:
        return executor(*args, **kwargs)
    finally:
        handle.remove()
        _report(tally, getattr(cache, "name", None))


def _predict_noise(executor: Any, *args: Any, **kwargs: Any) -> Any:
    model_options = args[2]
    tally: Tally | None = model_options["transformer_options"].get(KEY)
    if tally is None:  # a guider whose options were built before the run's (not the samplers darkroom runs)
        return executor(*args, **kwargs)
    before = tally.forward_passes
    output = executor(*args, **kwargs)
    if tally.forward_passes > before:
        tally.evaluated += 1
    else:
        tally.reused += 1
    return output


def _report(tally: Tally, cache: str | None) -> None:
    """The run's totals: the worker's log, and each of ``REPORTERS`` (the pack's routes send them to the
    prompt's WebSocket clients)."""
    log.info(
        "darkroom: %d model evaluations, %d reused from the step cache (%s; %d forward passes)",
        tally.evaluated, tally.reused, cache or "no step cache", tally.forward_passes,
    )  # fmt: skip
    context = get_executing_context()
    message = {
        "prompt_id": context.prompt_id if context else None, "node": context.node_id if context else None,
        "evaluated": tally.evaluated, "reused": tally.reused, "forward_passes": tally.forward_passes,
        "cache": cache,
    }  # fmt: skip
    for report in REPORTERS:
        report(message)

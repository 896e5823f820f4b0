"""The host's speed settings, applied to each diffusion model darkroom's loaders build: the facade
passes them to the worker as DARKROOM_TORCH_COMPILE (a torch.compile backend) and DARKROOM_FP8_MATMUL
(auto | off) (server/engine/speed.py).

- torch.compile goes through ComfyUI's own `set_torch_compile_wrapper` (as its TorchCompileModel node);
  compiling happens lazily at the first step, so a second wrapper times each call that compiled a new
  graph and logs it: the first call's time (compile plus one step), and each recompile on a new shape.
- fp8_matmul off makes ComfyUI's fp8 layers dequantise to the compute dtype before multiplying, as on
  GPUs without fp8 compute; auto leaves ComfyUI's choice (fp8 matmul where compute capability >= 8.9).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import comfy.model_patcher
import torch
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers import set_torch_compile_wrapper

log = logging.getLogger(__name__)

_TIMING_KEY = "darkroom.compile_timing"


def _skip_transformer_options(guard_entries: list[Any]) -> list[bool]:
    """ComfyUI's own guard filter (comfy_extras/nodes_torch_compile.py): per-call options never
    trigger a recompile."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _compile_timing(name: str) -> Callable[..., Any]:
    """An APPLY_MODEL wrapper that logs every call during which torch.compile built a new graph."""
    calls = {"n": 0}

    def timed(executor: Any, *args: Any, **kwargs: Any) -> Any:
        before, started = _graphs(), time.perf_counter()
        out = executor(*args, **kwargs)
        calls["n"] += 1
        if _graphs() > before:
            x = args[0] if args else kwargs.get("x")
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else "?"
            what = "compiled" if calls["n"] == 1 else "recompiled (torch's [__recompiles] lines say why)"
            log.warning(
                "torch.compile: %s %s for input %s: that step took %.1f s",
                what, name, shape, time.perf_counter() - started,
            )  # fmt: skip
        return out

    return timed


def apply_speed(
    model: comfy.model_patcher.ModelPatcher, name: str, environ: Mapping[str, str] | None = None
) -> comfy.model_patcher.ModelPatcher:
    """The model with the worker's speed settings applied (in place; returned for chaining)."""
    environ = os.environ if environ is None else environ
    if environ.get("DARKROOM_FP8_MATMUL") == "off":
        layers = [m for m in model.model.diffusion_model.modules() if getattr(m, "layout_type", None)]
        for layer in layers:
            layer._full_precision_mm = True
        if layers:
            log.info(
                "%s: fp8 matmul off: %d fp8 layers compute in %s", name, len(layers), model.model_dtype()
            )
    backend = environ.get("DARKROOM_TORCH_COMPILE")
    if backend:
        torch._logging.set_logs(recompiles=True)
        set_torch_compile_wrapper(
            model, backend=backend, options={"guard_filter_fn": _skip_transformer_options}
        )
        model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, _TIMING_KEY, _compile_timing(name))
        log.warning("%s: torch.compile (%s) on; the first step of each new shape compiles", name, backend)
    return model

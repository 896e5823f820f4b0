"""What ComfyUI's trainer needs that the pinned stack lacks: backward passes through comfy_kitchen's RoPE.

ComfyUI v0.8.0's FLUX attention rotates q and k with ``torch.ops.comfy_kitchen.apply_rope`` (and
``apply_rope1``) whenever comfy_kitchen is installed, and those custom ops have no autograd formula, so
TrainLoraNode fails in its first backward pass on every FLUX model. RoPE is a fixed rotation of each
pair of channels, linear in q and k: its gradient is the same rotation's transpose, computed here by
differentiating ComfyUI's own pure-torch fallback (comfy/ldm/flux/math.py) at the same inputs. The
forward pass is untouched (inference runs the kernels as before); registered once, on first use.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


def _rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """comfy/ldm/flux/math.py's apply_rope1 without comfy_kitchen (differentiable)."""
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def _save_inputs(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor, ...], output: object
) -> None:
    ctx.save_for_backward(*inputs)  # type: ignore[attr-defined]


def _grads(xs: list[torch.Tensor], freqs_cis: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in xs]
        outs = [_rope1(x, freqs_cis.detach()) for x in leaves]
        return list(torch.autograd.grad(outs, leaves, grads))


def _rope_backward(
    ctx: torch.autograd.function.FunctionCtx, grad_q: torch.Tensor, grad_k: torch.Tensor
) -> tuple:
    xq, xk, freqs_cis = ctx.saved_tensors  # type: ignore[attr-defined]
    dq, dk = _grads([xq, xk], freqs_cis, [grad_q, grad_k])
    return dq, dk, None


def _rope1_backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    x, freqs_cis = ctx.saved_tensors  # type: ignore[attr-defined]
    (dx,) = _grads([x], freqs_cis, [grad])
    return dx, None


@functools.cache
def enable_rope_backward() -> None:
    """Register the RoPE ops' backward passes (a no-op without comfy_kitchen)."""
    namespace = getattr(torch.ops, "comfy_kitchen", None)
    for name, backward in (("apply_rope", _rope_backward), ("apply_rope1", _rope1_backward)):
        if namespace is None or not hasattr(namespace, name):
            continue
        torch.library.register_autograd(f"comfy_kitchen::{name}", backward, setup_context=_save_inputs)
        log.info("comfy_kitchen::%s: backward registered for LoRA training", name)

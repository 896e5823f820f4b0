"""Each training step's loss, live: ComfyUI's TrainLoraNode keeps its loss curve to itself until the run
ends (its ``TrainSampler`` hands each step's loss to a callback that only appends to a list), so
``reporting_losses`` runs the stock node with ``nodes_train.TrainSampler`` replaced, for that one call,
by a subclass that calls the node's callback and then reports the loss. ComfyUI runs one node at a time
on one thread, and the original class is put back when the call ends, whatever happens.

Each report is a dict (prompt_id, node, step, total, loss) given to every ``REPORTERS`` entry; the pack's
routes send it as a ``darkroom.loss`` WebSocket message, right before ComfyUI's own progress message of
the same step, and the facade puts the loss into that step's progress event and the status logs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from comfy_execution.utils import get_executing_context
from comfy_extras import nodes_train

KEY = "darkroom.loss"  # the WebSocket message type
REPORTERS: list[Callable[[dict[str, Any]], None]] = []


@contextlib.contextmanager
def reporting_losses() -> Iterator[None]:
    """Within the block, every TrainSampler ComfyUI's trainer makes reports each step's loss."""
    context = get_executing_context()
    prompt_id, node = (context.prompt_id, context.node_id) if context else (None, None)
    stock = nodes_train.TrainSampler

    class ReportingSampler(stock):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, loss_callback: Callable[[float], None] | None = None, **kw: Any):
            step = 0

            def report(loss: float) -> None:
                nonlocal step
                if loss_callback is not None:
                    loss_callback(loss)
                step += 1
                message = {
                    "prompt_id": prompt_id, "node": node, "step": step, "total": self.total_steps,
                    "loss": float(loss) if math.isfinite(loss) else None,
                }  # fmt: skip
                for reporter in REPORTERS:
                    reporter(message)

            super().__init__(*args, loss_callback=report, **kw)

    nodes_train.TrainSampler = ReportingSampler
    try:
        yield
    finally:
        nodes_train.TrainSampler = stock

"""Live events: ComfyUI's typed events for one request turned into the hub's JSON events.

``LiveReporter`` is the ``on_event`` sink of ``Generator.run``: it publishes ``started``, ``progress``
(node, step, total and a monotonic overall fraction across the graph's sampling nodes), rate-limited
``preview`` events (a small JPEG, base64) and ``log`` lines in fal's log-entry shape. The terminal
``completed`` / ``failed`` events come from whoever owns the request's outcome (the queue, after it
persisted it, or ``run_live`` for sync runs), built with ``completed_event`` / ``failed_event``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from PIL import Image
from pydantic import BaseModel

from server.engine import client as cc
from server.errors import CANCELLED_DETAIL, DarkroomError, StartTimeoutError, public_message
from server.generation.generator import EventSink, Generator
from server.generation.progress import ProgressHub
from server.workflows.mapping import Endpoint

logger = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLER_CLASS_TYPES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
PREVIEW_MAX_SIDE_PX = 256
FINISHED_STATE_TTL_S = 300.0  # a finished request's live state stays this long for late (re)subscribers


def iso_utc(timestamp_s: float) -> str:
    """fal's log timestamp: ISO-8601 UTC with milliseconds and a Z, e.g. 2026-02-17T10:30:01.123Z."""
    moment = datetime.fromtimestamp(timestamp_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def log_event(message: str, level: str = "INFO", *, timestamp_s: float) -> dict[str, Any]:
    """A hub ``log`` event; without "type" (and "request_id") it is fal's log entry."""
    return {
        "type": "log", "message": message, "level": level, "source": "USER",
        "timestamp": iso_utc(timestamp_s),
    }  # fmt: skip


def fal_log_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    """The status route's log entry for a hub log event."""
    return {k: event[k] for k in ("message", "level", "source", "timestamp")}


def completed_event(result: Any) -> dict[str, Any]:
    return {"type": "completed", "status_code": 200, "result": result}


def failed_event(status_code: int, detail: Any, error: str, error_type: str) -> dict[str, Any]:
    return {
        "type": "failed", "status_code": status_code, "detail": detail, "error": error,
        "error_type": error_type,
    }  # fmt: skip


class OverallProgress:
    """The fraction of the graph's sampling done, counting each sampling node equally; never decreases.

    Sampling nodes are the graph's sampler class types; a graph with none counts every node that
    reports progress instead (the count may grow, so the fraction is clamped to stay monotonic).
    """

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self.samplers = {
            node_id for node_id, node in graph.items()
            if isinstance(node, Mapping) and node.get("class_type") in SAMPLER_CLASS_TYPES
        }  # fmt: skip
        self._dynamic = not self.samplers
        self._done: set[str] = set()
        self._current: tuple[str, float] | None = None
        self.fraction = 0.0

    def step(self, node: str | None, value: float, total: float) -> float:
        if node is not None and self._dynamic:
            self.samplers.add(node)
        if node in self.samplers and node is not None:
            self._current = (node, min(1.0, value / total) if total > 0 else 0.0)
        return self._update()

    def finished(self, nodes: Iterable[str]) -> float:
        for node in nodes:
            if node in self.samplers:
                self._done.add(node)
                if self._current is not None and self._current[0] == node:
                    self._current = None
        return self._update()

    def _update(self) -> float:
        partial = self._current[1] if self._current and self._current[0] not in self._done else 0.0
        if self.samplers:
            self.fraction = max(self.fraction, min(1.0, (len(self._done) + partial) / len(self.samplers)))
        return self.fraction


def shrink_preview(image: bytes, *, max_side_px: int = PREVIEW_MAX_SIDE_PX) -> tuple[bytes, int, int]:
    """The preview as a JPEG no larger than max_side_px on its longer side: (bytes, width, height)."""
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((max_side_px, max_side_px))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=75)
    return out.getvalue(), picture.width, picture.height


TRAINING_NODES = frozenset({"DarkroomTrainLora", "TrainLoraNode"})


class LiveReporter:
    """Publishes one request's ComfyUI events to the hub (use as ``Generator.run(on_event=...)``)."""

    def __init__(
        self, hub: ProgressHub, request_id: str, graph: Mapping[str, Any], *, previews_per_s: float,
        clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.hub = hub
        self.request_id = request_id
        self.graph = graph
        self.previews_per_s = previews_per_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.overall = OverallProgress(graph)
        self._running: str | None = None
        self._last_preview_at: float | None = None
        self._node_started_at: dict[str, float] = {}  # first progress of each node: elapsed and ETA
        self._logged_tenth: dict[str, int] = {}
        self._loss: dict[str, float | None] = {}  # each training node's last reported loss
        self.training_steps = 0  # the steps the training nodes reported done (metered)

    def publish(self, event: dict[str, Any]) -> None:
        self.hub.publish(self.request_id, event)

    def log(self, message: str, level: str = "INFO") -> None:
        self.publish(log_event(message, level, timestamp_s=self.wall_clock()))

    def _describe(self, node: str | None) -> str:
        entry = self.graph.get(node or "")
        class_type = entry.get("class_type") if isinstance(entry, Mapping) else None
        return f"node {node} ({class_type})" if class_type else f"node {node}"

    async def __call__(self, event: cc.Event) -> None:
        if isinstance(event, cc.Started):
            self.publish({"type": "started", "timestamp": iso_utc(self.wall_clock())})
            self.log("Started on a ComfyUI worker")
        elif isinstance(event, cc.Cached):
            self.overall.finished(event.nodes)
            if event.nodes:
                self.log(f"Reused {len(event.nodes)} cached node(s)")
        elif isinstance(event, cc.Executing):
            self._node_started(event.node)
        elif isinstance(event, cc.Loss):
            self._loss[event.node or ""] = event.loss
        elif isinstance(event, cc.Progress):
            self._progress(event)
        elif isinstance(event, cc.Executed):
            self.overall.finished([event.node])
        elif isinstance(event, cc.Evaluations):
            cache = f"the step cache ({event.cache})" if event.cache else "no step cache (acceleration none)"
            self.log(
                f"{self._describe(event.node)} evaluated the diffusion model {event.evaluated} time(s) and "
                f"reused {event.reused} result(s) from {cache}"
            )
        elif isinstance(event, cc.Preview):
            await self._preview(event)
        elif isinstance(event, cc.ExecutionError):
            message = public_message(event.message)
            self.log(f"{self._describe(event.node_id)} failed: {event.exception_type}: {message}", "ERROR")
        elif isinstance(event, cc.Interrupted):
            self.log("Interrupted", "WARN")
        elif isinstance(event, cc.Success):
            self.log("Finished")
        elif isinstance(event, cc.WorkerLost):
            self.log(f"Lost its ComfyUI worker ({event.reason}); running it again", "WARN")
            self._node_started_at.clear()  # the new try's elapsed time and ETA start afresh
            self._logged_tenth.clear()
        elif isinstance(event, cc.Note):
            self.log(event.message, event.level)

    def _node_started(self, node: str | None) -> None:
        if self._running is not None:
            self.overall.finished([self._running])
        self._running = node
        if node is not None:
            self.log(f"Running {self._describe(node)}")

    def _progress(self, event: cc.Progress) -> None:
        entry = self.graph.get(event.node or "")
        class_type = entry.get("class_type") if isinstance(entry, Mapping) else None
        now = self.clock()
        started = self._node_started_at.setdefault(event.node or "", now)
        elapsed_s = now - started
        # the first step's time is not measured (the node's start is its first report): ETA from the rest
        done = max(event.value - 1, 0)
        eta_s = elapsed_s / done * (event.max - event.value) if done and event.max >= event.value else None
        fraction = self.overall.step(event.node, event.value, event.max)
        progress = {
            "type": "progress", "node": event.node, "class_type": class_type, "step": int(event.value),
            "total": int(event.max), "fraction": round(fraction, 4),
            "elapsed_s": round(elapsed_s, 3), "eta_s": None if eta_s is None else round(eta_s, 3),
        }  # fmt: skip
        if class_type in TRAINING_NODES:
            progress["loss"] = self._loss.get(event.node or "")
        self.publish(progress)
        if class_type in TRAINING_NODES:
            self._log_training(event, elapsed_s, eta_s)

    def _log_training(self, event: cc.Progress, elapsed_s: float, eta_s: float | None) -> None:
        """A training run's step, loss, elapsed time and ETA in the status logs, at each tenth of its
        steps (the progress event itself carries the loss at every step)."""
        self.training_steps += 1
        tenth = int(10 * event.value / event.max) if event.max else 0
        if tenth <= self._logged_tenth.get(event.node or "", 0) and event.value != 1:
            return
        self._logged_tenth[event.node or ""] = tenth
        loss = self._loss.get(event.node or "")
        said = f", loss {loss:.4f}" if loss is not None else ""
        eta = f", ETA {eta_s:.0f} s" if eta_s is not None else ""
        self.log(
            f"Training: step {int(event.value)} of {int(event.max)}{said}, {elapsed_s:.1f} s elapsed{eta}"
        )

    async def _preview(self, event: cc.Preview) -> None:
        if self.previews_per_s <= 0:
            return
        now = self.clock()
        if self._last_preview_at is not None and now - self._last_preview_at < 1.0 / self.previews_per_s:
            return
        self._last_preview_at = now
        try:
            data, width, height = await asyncio.to_thread(shrink_preview, event.image)
        except (OSError, ValueError) as e:  # Pillow's UnidentifiedImageError is an OSError
            logger.debug("request %s: unreadable preview skipped (%s)", self.request_id, e)
            return
        self.publish(
            {
                "type": "preview", "node": event.node, "content_type": "image/jpeg", "width": width,
                "height": height, "image": base64.b64encode(data).decode("ascii"),
            }
        )  # fmt: skip


async def run_live(
    generator: Generator, hub: ProgressHub, endpoint: Endpoint, request: BaseModel, *,
    request_id: str, base_url: str, previews_per_s: float, start_timeout_s: float | None = None,
    turn: Callable[[], contextlib.AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    measured: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A sync run with live events: ``Generator.run`` plus the terminal event; errors propagate. It runs
    within ``turn()`` (the queue's: its turn among queued requests). With ``start_timeout_s`` it must
    start on a worker within that many seconds (504 if not), its wait for its turn included. What it
    measured for metering goes into ``measured`` however it ends (``training_steps``)."""
    reporter = LiveReporter(hub, request_id, endpoint.workflow, previews_per_s=previews_per_s)

    async def in_turn(sink: EventSink) -> dict[str, Any]:
        async with turn():
            return await generator.run(
                endpoint, request, request_id=request_id, base_url=base_url, on_event=sink
            )

    try:
        output = await started_within(start_timeout_s, in_turn, reporter)
    except DarkroomError as e:
        hub.publish(request_id, failed_event(e.status, e.detail, e.message, e.code))
        raise
    except asyncio.CancelledError:
        hub.publish(request_id, failed_event(499, CANCELLED_DETAIL, CANCELLED_DETAIL, "request_cancelled"))
        raise
    except Exception:
        hub.publish(
            request_id, failed_event(500, "Internal Server Error", "Internal Server Error", "internal_error")
        )
        raise
    finally:
        if measured is not None:
            measured["training_steps"] = reporter.training_steps
        asyncio.get_running_loop().call_later(FINISHED_STATE_TTL_S, hub.forget, request_id)
    hub.publish(request_id, completed_event(output))
    return output


async def started_within(
    timeout_s: float | None, run: Callable[[EventSink], Awaitable[T]], on_event: EventSink
) -> T:
    """``run(sink)``, whose first event (its start on a worker) must come within ``timeout_s`` (None: no
    limit; X-Fal-Request-Timeout); past it, the run is cancelled and ``StartTimeoutError`` (504) raised.
    Once it started, it runs without that limit (its run limit is the generator's)."""
    deadline = asyncio.timeout(timeout_s)

    async def sink(event: Any) -> None:
        deadline.reschedule(None)
        await on_event(event)

    try:
        async with deadline:
            return await run(sink)
    except TimeoutError:
        if deadline.expired():
            raise StartTimeoutError from None
        raise

"""Per-request live events, fanned out to any number of subscribers (WebSocket, SSE, status streams).

Events are JSON-ready dicts with a "type": queued, started, progress, preview, log, completed, failed.
The hub keeps each request's current state (last queued/started/progress event, the logs, the
terminal event) so a subscriber that arrives late, or reconnects, gets it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

TERMINAL_TYPES = frozenset({"completed", "failed"})
_STATE_TYPES = frozenset({"queued", "started", "progress"})


@dataclass
class _Request:
    state: dict[str, Any] | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    terminal: dict[str, Any] | None = None
    queues: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)

    def snapshot(self) -> list[dict[str, Any]]:
        events = [self.state] if self.state else []
        events += self.logs
        return events + ([self.terminal] if self.terminal else [])


class ProgressHub:
    """In-process pub/sub keyed by request id; publishing never blocks on a slow subscriber."""

    def __init__(self, *, max_queued_events: int = 1000, max_log_lines: int = 1000) -> None:
        self._requests: dict[str, _Request] = {}
        self._max_queued_events = max_queued_events
        self._max_log_lines = max_log_lines

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        """Record the event in the request's state and hand it to every current subscriber."""
        entry = self._requests.setdefault(request_id, _Request())
        kind = event["type"]
        if kind in _STATE_TYPES:
            entry.state = event
        elif kind == "log":
            entry.logs = (entry.logs + [event])[-self._max_log_lines :]
        elif kind in TERMINAL_TYPES:
            entry.terminal = event
        for queue in entry.queues:
            if queue.qsize() < self._max_queued_events or kind in TERMINAL_TYPES:
                queue.put_nowait(event)

    def snapshot(self, request_id: str) -> list[dict[str, Any]]:
        """The events a new subscriber would get first: state, logs so far, terminal event."""
        entry = self._requests.get(request_id)
        return entry.snapshot() if entry else []

    async def subscribe(self, request_id: str) -> AsyncIterator[dict[str, Any]]:
        """The current state, then live events, ending after the terminal event."""
        entry = self._requests.setdefault(request_id, _Request())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        entry.queues.add(queue)
        try:
            for event in entry.snapshot():
                yield event
                if event["type"] in TERMINAL_TYPES:
                    return
            while True:
                event = await queue.get()
                yield event
                if event["type"] in TERMINAL_TYPES:
                    return
        finally:
            entry.queues.discard(queue)

    def forget(self, request_id: str) -> None:
        """Drop a finished request's state (its result lives in the job store)."""
        entry = self._requests.get(request_id)
        if entry is not None and not entry.queues:
            del self._requests[request_id]

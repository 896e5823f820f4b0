"""Per-request live events, fanned out to any number of subscribers (WebSocket, SSE, status streams).

Events are JSON-ready dicts with a "type" and the "request_id" (added on publish): queued(position),
started, progress(node, class_type, step, total, fraction), preview(content_type, width, height,
image base64), log(message, level, source, timestamp), completed(status_code, result) and
failed(status_code, detail, error, error_type); ``server/generation/live.py`` builds them.
The hub keeps each request's current state (last queued/started/progress event, the logs, the
terminal event) so a subscriber that arrives late, or reconnects, gets it at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
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
    forgotten: bool = False  # forget() was asked while subscribers were still there

    def snapshot(self) -> list[dict[str, Any]]:
        events = [self.state] if self.state else []
        events += self.logs
        return events + ([self.terminal] if self.terminal else [])


class Subscription:
    """Async iterator over one request's events: its snapshot, then live events, ending after the
    terminal one. Registered when created, so nothing published afterwards is missed; ``__anext__``
    may be cancelled (e.g. by a keep-alive timeout) without losing events. ``close()`` when done."""

    def __init__(self, hub: ProgressHub, request_id: str, entry: _Request) -> None:
        self._hub = hub
        self._request_id = request_id
        self._entry = entry
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._backlog = deque(entry.snapshot())
        self._done = False
        entry.queues.add(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        event = self._backlog.popleft() if self._backlog else await self._queue.get()
        if event["type"] in TERMINAL_TYPES:
            self.close()
        return event

    def close(self) -> None:
        self._done = True
        self._entry.queues.discard(self._queue)
        if self._entry.forgotten:
            self._hub.forget(self._request_id)


class ProgressHub:
    """In-process pub/sub keyed by request id; publishing never blocks on a slow subscriber."""

    def __init__(self, *, max_queued_events: int = 1000, max_log_lines: int = 1000) -> None:
        self._requests: dict[str, _Request] = {}
        self._max_queued_events = max_queued_events
        self._max_log_lines = max_log_lines
        # Told of every event published (a fleet host relays its runs' events to the others); fast,
        # must not raise.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        """Record the event in the request's state and hand it to every current subscriber."""
        entry = self._requests.setdefault(request_id, _Request())
        event = {**event, "request_id": request_id}
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
        for listener in self.listeners:
            listener(request_id, event)

    def snapshot(self, request_id: str) -> list[dict[str, Any]]:
        """The events a new subscriber would get first: state, logs so far, terminal event."""
        entry = self._requests.get(request_id)
        return entry.snapshot() if entry else []

    def known(self, request_id: str) -> bool:
        """Whether the hub holds any state for the request."""
        entry = self._requests.get(request_id)
        return entry is not None and (entry.state is not None or entry.terminal is not None)

    def watched(self, request_id: str) -> bool:
        """Whether anyone is subscribed to the request now."""
        entry = self._requests.get(request_id)
        return entry is not None and bool(entry.queues)

    def finished(self, request_id: str) -> bool:
        """Whether the hub holds the request's terminal event."""
        entry = self._requests.get(request_id)
        return entry is not None and entry.terminal is not None

    def logs(self, request_id: str) -> list[dict[str, Any]]:
        """The request's log events so far (the newest max_log_lines)."""
        entry = self._requests.get(request_id)
        return list(entry.logs) if entry else []

    def subscribe(self, request_id: str) -> Subscription:
        """The current state, then live events, ending after the terminal event."""
        return Subscription(self, request_id, self._requests.setdefault(request_id, _Request()))

    def forget(self, request_id: str) -> None:
        """Drop a finished request's state (its result lives in the job store), now or once the
        last subscriber has left."""
        entry = self._requests.get(request_id)
        if entry is None:
            return
        if entry.queues:
            entry.forgotten = True  # the last subscriber to leave drops it
        elif self._requests.get(request_id) is entry:
            del self._requests[request_id]

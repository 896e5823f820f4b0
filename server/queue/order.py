"""The queue's order in memory: every unexpired job by id, the waiting ones FIFO per priority, and
the queue positions published to subscribers whenever one changes.

A waiting job is *pending* until a runner takes it, then *dispatching* (still waiting, now for a
worker, and first in line) until its first ComfyUI event. Positions count both, across priorities:
position 0 is the next to start.
"""

from __future__ import annotations

from collections.abc import Iterator

from server.generation.progress import ProgressHub
from server.queue.store import JobRecord, JobStatus, Priority


class QueueOrder:
    """Which jobs exist, which wait and in what order; see the module docstring."""

    def __init__(self, hub: ProgressHub) -> None:
        self.hub = hub
        self.jobs: dict[str, JobRecord] = {}  # every unexpired job, light (no outcome body)
        self._pending: dict[Priority, dict[str, None]] = {p: {} for p in Priority}
        self._dispatching: dict[str, None] = {}
        self._published: dict[str, int] = {}  # last position published per waiting job

    def add(self, record: JobRecord, *, waiting: bool) -> None:
        """Index a job; a waiting one joins the end of its priority's line."""
        self.jobs[record.request_id] = record
        if waiting:
            self._pending[record.priority][record.request_id] = None

    def place(self, record: JobRecord) -> None:
        """Index a job where its status puts it (a record read from the fleet's store): in its
        priority's line, by seq, while queued; out of every line once it runs or ended."""
        request_id, line = record.request_id, self._pending[record.priority]
        self.jobs[request_id] = record
        if record.status is not JobStatus.IN_QUEUE:
            line.pop(request_id, None)
            self._dispatching.pop(request_id, None)
            self._published.pop(request_id, None)
        elif request_id not in line and request_id not in self._dispatching:
            last = next(reversed(line), None)
            line[request_id] = None
            if last is not None and self.jobs[last].seq > record.seq:  # a job queued again
                self._pending[record.priority] = dict.fromkeys(sorted(line, key=lambda r: self.jobs[r].seq))

    def dispatch(self, record: JobRecord) -> None:
        """A job this host claimed: first in line until its first ComfyUI event."""
        self._pending[record.priority].pop(record.request_id, None)
        self._dispatching[record.request_id] = None

    def has_pending(self) -> bool:
        return any(self._pending.values())

    def is_pending(self, request_id: str) -> bool:
        """Whether the job waits for a runner to take it."""
        return any(request_id in line for line in self._pending.values())

    def take_next(self) -> JobRecord:
        """The next pending job (highest priority, oldest first), now dispatching."""
        priority = next(p for p in Priority if self._pending[p])
        request_id = next(iter(self._pending[priority]))
        del self._pending[priority][request_id]
        self._dispatching[request_id] = None
        return self.jobs[request_id]

    def pending(self) -> list[JobRecord]:
        """The jobs no runner has taken yet, in order."""
        return [self.jobs[rid] for priority in Priority for rid in self._pending[priority]]

    def unqueue(self, record: JobRecord) -> bool:
        """Take a not-yet-dispatched job out of the line; False if it is not waiting there."""
        pending = self._pending[record.priority]
        if record.request_id not in pending:
            return False
        del pending[record.request_id]
        self.left(record.request_id)
        return True

    def left(self, request_id: str) -> None:
        """The job stopped waiting (it started, or its runner is done with it): move the others up."""
        self._dispatching.pop(request_id, None)
        self._published.pop(request_id, None)
        self.publish_positions()

    def forget(self, request_id: str) -> None:
        self.jobs.pop(request_id, None)

    def _waiting_ids(self) -> Iterator[str]:
        yield from self._dispatching
        for priority in Priority:
            yield from self._pending[priority]

    def position(self, request_id: str) -> int | None:
        """How many waiting jobs are ahead of this one (0 = next), across priorities."""
        for ahead, waiting_id in enumerate(self._waiting_ids()):
            if waiting_id == request_id:
                return ahead
        return None

    def length(self, app_id: str | None = None) -> int:
        """Jobs waiting to start (for one app, or all)."""
        if app_id is None:
            return len(self._dispatching) + sum(len(p) for p in self._pending.values())
        return sum(1 for rid in self._waiting_ids() if self.jobs[rid].app_id == app_id)

    def publish_positions(self) -> None:
        """Tell each waiting job's subscribers its position, where it changed."""
        for position, request_id in enumerate(self._waiting_ids()):
            if self._published.get(request_id) != position:
                self._published[request_id] = position
                self.hub.publish(request_id, {"type": "queued", "position": position})

"""What the queue answers about one request: its handle (``Job``, as in arq), cancel's answers and the
queue's two refusals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from server.errors import DarkroomError
from server.generation.progress import ProgressHub
from server.queue.store import JobRecord, JobStatus, Outcome


class QueueFullError(DarkroomError):
    """The queue (or the app's share of it) is at its limit (429; clients retry later)."""

    status = 429
    code = "queue_full"


class StillRunningError(DarkroomError):
    """A result was asked for before the request finished."""

    status = 400
    code = "request_in_progress"


class CancelResult(StrEnum):
    """fal's cancel answers (the body's "status")."""

    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class Queue(Protocol):
    """What a ``Job`` needs of ``JobQueue``."""

    hub: ProgressHub

    def get(self, request_id: str) -> JobRecord | None: ...
    async def outcome(self, request_id: str) -> Outcome: ...
    async def cancel(self, request_id: str) -> CancelResult: ...


@dataclass(frozen=True)
class Job:
    """A handle on one queued request (as in arq): its status, its outcome when done, cancel it."""

    request_id: str
    queue: Queue

    def status(self) -> JobStatus | None:
        record = self.queue.get(self.request_id)
        return None if record is None else record.status

    async def result(self, *, timeout_s: float | None = None) -> Outcome:
        """Wait until the request finished; its outcome (body included)."""
        async with asyncio.timeout(timeout_s):
            if self.status() in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS):
                subscription = self.queue.hub.subscribe(self.request_id)
                try:
                    async for _ in subscription:
                        pass
                finally:
                    subscription.close()
        return await self.queue.outcome(self.request_id)

    async def abort(self) -> CancelResult:
        return await self.queue.cancel(self.request_id)

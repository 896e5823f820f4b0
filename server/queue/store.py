"""Queue jobs: the record, the ``JobStore`` interface, and the row shape both stores share.

A job is one ``POST /queue/...`` request. Its record holds what is needed to run it again after a
restart (validated input, base URL, priority, deadline, webhook) and, once finished, its outcome:
the HTTP status, body and headers the result route replays. Pending webhook deliveries live in the
same store, written in the same transaction as the outcome, so neither is lost across a crash.

Two implementations: ``sqlite_store.SqliteJobStore`` (one host, the embedded default) and
``postgres_store.PostgresJobStore`` (a fleet of hosts on one database).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from server.errors import CANCELLED_DETAIL
from server.queue.accounts import SqlRunner

DEFAULT_USER_ID = "darkroom"


class JobStatus(StrEnum):
    """fal's three request states; a failure or cancellation is COMPLETED with an error."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(StrEnum):
    """``X-Fal-Queue-Priority``: every normal job runs before any low one; FIFO within each."""

    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return 0 if self is Priority.NORMAL else 1


@dataclass(frozen=True)
class Outcome:
    """How a job ended: the response its result route replays, and what its status reports."""

    status_code: int
    body_json: str
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    inference_time_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code == 200

    def without_body(self) -> Outcome:
        """The same outcome minus the (possibly large) body, for the in-memory index."""
        return replace(self, body_json="")


def error_outcome(status_code: int, detail: Any, error: str, error_type: str, **headers: str) -> Outcome:
    """A failure replayed as ``{"detail", "error_type"}`` with ``x-fal-error-type``, like the middleware."""
    body = json.dumps({"detail": detail, "error_type": error_type})
    return Outcome(status_code, body, {"x-fal-error-type": error_type, **headers}, error, error_type)


CANCELLED = error_outcome(499, CANCELLED_DETAIL, CANCELLED_DETAIL, "request_cancelled")
START_TIMEOUT = error_outcome(
    504, "Request timed out: it did not start before its X-Fal-Request-Timeout deadline",
    "Request timed out before it started", "request_timeout", **{"X-Fal-Request-Timeout-Type": "user"},
)  # fmt: skip
RESTARTED_TWICE = error_outcome(
    503, "The server stopped twice while this request was running; it was not run a third time",
    "The server stopped twice while this request was running", "runner_disconnected",
)  # fmt: skip


@dataclass(frozen=True)
class Expected:
    """The state ``finish`` requires: queued, or running on ``owner`` (a fleet host id; None: no fleet)."""

    status: JobStatus
    owner: str | None = None

    def where(self, placeholder: str) -> tuple[str, tuple[Any, ...]]:
        """The SQL condition (both stores accept ``IS`` for a NULL-safe comparison) and its values."""
        if self.status is JobStatus.IN_PROGRESS:
            return f" AND status = 'IN_PROGRESS' AND host_id IS NOT DISTINCT FROM {placeholder}", (
                self.owner,
            )
        return f" AND status = '{self.status.value}'", ()


@dataclass
class JobRecord:
    """One queued request. ``seq`` (assigned by the store) orders jobs of equal priority."""

    request_id: str
    app_id: str
    url_path: str
    base_url: str
    input: dict[str, Any]
    priority: Priority = Priority.NORMAL
    submitted_at: float = 0.0
    start_deadline: float | None = None
    webhook_url: str | None = None
    user_id: str = DEFAULT_USER_ID
    status: JobStatus = JobStatus.IN_QUEUE
    seq: int = 0
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    outcome: Outcome | None = None
    host_id: str | None = None  # the fleet host running it (PostgreSQL store; None on one host)
    pinned_host: str | None = None  # only this fleet host may run it (editor runs: its ComfyUI)
    training_steps: int = 0  # steps a trainer ran here (counted live, for metering; not stored)


@dataclass(frozen=True)
class Delivery:
    """One pending webhook POST; ``body`` is exactly the bytes that are signed and sent."""

    request_id: str
    user_id: str
    url: str
    body: bytes
    next_attempt_at: float
    attempts: int = 0
    id: int = 0


class JobStore(SqlRunner, Protocol):
    """Durable job and webhook-delivery storage (and, through ``SqlRunner``, the managed keys and
    usage rows of ``server.queue.accounts``); a networked implementation can replace SQLite."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, job: JobRecord) -> int:
        """Persist a new IN_QUEUE job; returns its seq."""

    async def claim(self, request_id: str, *, started_at: float) -> int | None:
        """IN_QUEUE -> IN_PROGRESS, counting an attempt; the new attempt count, or None if not queued."""

    async def requeue(self, request_id: str, *, attempts: int, owner: str | None = None) -> bool:
        """A running job back to IN_QUEUE with the given attempt count (restart recovery, graceful
        shutdown), if ``owner`` (a fleet host id, or None) still runs it; whether it did."""

    async def finish(
        self, request_id: str, outcome: Outcome, *, finished_at: float, expires_at: float,
        logs: Sequence[dict[str, Any]], delivery: Delivery | None = None, expect: Expected | None = None,
    ) -> bool:  # fmt: skip
        """Record the outcome (and queue its webhook delivery) atomically, if the job is still as
        ``expect`` says (queued, or running on a given host): a fleet host that lost its lease, or
        lost a race to cancel a queued job, writes nothing. Whether it was recorded."""

    async def get(self, request_id: str) -> JobRecord | None:
        """The full record, outcome body included."""

    async def logs(self, request_id: str) -> list[dict[str, Any]]: ...
    async def index(self) -> list[JobRecord]:
        """Every job, ordered by seq, without outcome bodies (inputs only for unfinished ones)."""

    async def delete(self, request_ids: Sequence[str]) -> None: ...
    async def add_delivery(self, delivery: Delivery) -> None: ...
    async def lease_deliveries(self, now: float, *, lease_s: float, limit: int) -> list[Delivery]:
        """The due deliveries, each now pushed ``lease_s`` into the future in the same transaction, so
        exactly one sender (of one host, or of a fleet) attempts it; a sender that dies mid-attempt
        leaves it due again once the lease ends."""

    async def next_delivery_at(self) -> float | None: ...
    async def reschedule_delivery(
        self, delivery_id: int, *, attempts: int, next_attempt_at: float
    ) -> None: ...
    async def delete_delivery(self, delivery_id: int) -> None: ...


COLUMNS = (
    "seq, request_id, app_id, url_path, base_url, {input}, priority, submitted_at, start_deadline, "
    "webhook_url, user_id, status, attempts, started_at, finished_at, expires_at, status_code, {body}, "
    "headers, error, error_type, inference_time_s, host_id, pinned_host"
)
# The index leaves out outcome bodies and finished jobs' inputs: only what the queue keeps in memory.
LIGHT_COLUMNS = COLUMNS.format(input="CASE WHEN status = 'COMPLETED' THEN '{}' ELSE input END", body="''")
FULL_COLUMNS = COLUMNS.format(input="input", body="body")


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A ``JobRecord`` from a row of ``FULL_COLUMNS`` or ``LIGHT_COLUMNS``."""
    (seq, request_id, app_id, url_path, base_url, input_json, priority, submitted_at, start_deadline,
     webhook_url, user_id, status, attempts, started_at, finished_at, expires_at, status_code, body,
     headers, error, error_type, inference_time_s, host_id, pinned_host) = row  # fmt: skip
    outcome = None
    if status_code is not None:
        outcome = Outcome(
            int(status_code), body or "", json.loads(headers or "{}"), error, error_type, inference_time_s
        )
    return JobRecord(
        request_id=request_id, app_id=app_id, url_path=url_path, base_url=base_url,
        input=json.loads(input_json), priority=Priority(priority), submitted_at=submitted_at,
        start_deadline=start_deadline, webhook_url=webhook_url, user_id=user_id, status=JobStatus(status),
        seq=seq, attempts=attempts, started_at=started_at, finished_at=finished_at, expires_at=expires_at,
        outcome=outcome, host_id=host_id, pinned_host=pinned_host,
    )  # fmt: skip

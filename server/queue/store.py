"""Queue jobs: the record, the ``JobStore`` interface and its SQLite implementation.

A job is one ``POST /queue/...`` request. Its record holds what is needed to run it again after a
restart (validated input, base URL, priority, deadline, webhook) and, once finished, its outcome:
the HTTP status, body and headers the result route replays. Pending webhook deliveries live in the
same store, written in the same transaction as the outcome, so neither is lost across a crash.

``SqliteJobStore`` keeps one WAL-mode file and runs every sqlite call on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from server.errors import CANCELLED_DETAIL

T = TypeVar("T")

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


CANCELLED = Outcome(
    499, json.dumps({"detail": CANCELLED_DETAIL}), {}, error=CANCELLED_DETAIL, error_type="request_cancelled"
)
START_TIMEOUT = error_outcome(
    504, "Request timed out: it did not start before its X-Fal-Request-Timeout deadline",
    "Request timed out before it started", "request_timeout", **{"X-Fal-Request-Timeout-Type": "user"},
)  # fmt: skip
RESTARTED_TWICE = error_outcome(
    503, "The server stopped twice while this request was running; it was not run a third time",
    "The server stopped twice while this request was running", "runner_disconnected",
)  # fmt: skip


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


class JobStore(Protocol):
    """Durable job and webhook-delivery storage; a networked implementation can replace SQLite."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, job: JobRecord) -> int:
        """Persist a new IN_QUEUE job; returns its seq."""

    async def claim(self, request_id: str, *, started_at: float) -> int | None:
        """IN_QUEUE -> IN_PROGRESS, counting an attempt; the new attempt count, or None if not queued."""

    async def requeue(self, request_id: str, *, attempts: int) -> None:
        """Back to IN_QUEUE with the given attempt count (restart recovery, graceful shutdown)."""

    async def finish(
        self, request_id: str, outcome: Outcome, *, finished_at: float, expires_at: float,
        logs: Sequence[dict[str, Any]], delivery: Delivery | None = None,
    ) -> None:  # fmt: skip
        """Record the outcome (and queue its webhook delivery) atomically."""

    async def get(self, request_id: str) -> JobRecord | None:
        """The full record, outcome body included."""

    async def logs(self, request_id: str) -> list[dict[str, Any]]: ...
    async def index(self) -> list[JobRecord]:
        """Every job, ordered by seq, without outcome bodies (inputs only for unfinished ones)."""

    async def delete(self, request_ids: Sequence[str]) -> None: ...
    async def add_delivery(self, delivery: Delivery) -> None: ...
    async def due_deliveries(self, now: float, *, limit: int) -> list[Delivery]: ...
    async def next_delivery_at(self) -> float | None: ...
    async def reschedule_delivery(
        self, delivery_id: int, *, attempts: int, next_attempt_at: float
    ) -> None: ...
    async def delete_delivery(self, delivery_id: int) -> None: ...


SCHEMA_VERSION = 1
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        app_id TEXT NOT NULL, url_path TEXT NOT NULL, base_url TEXT NOT NULL,
        input TEXT NOT NULL, priority TEXT NOT NULL, submitted_at REAL NOT NULL,
        start_deadline REAL, webhook_url TEXT, user_id TEXT NOT NULL,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        started_at REAL, finished_at REAL, expires_at REAL,
        status_code INTEGER, body TEXT, headers TEXT, error TEXT, error_type TEXT,
        inference_time_s REAL, logs TEXT
    );
    CREATE INDEX jobs_status ON jobs (status, priority, seq);
    CREATE INDEX jobs_expiry ON jobs (expires_at);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL, user_id TEXT NOT NULL, url TEXT NOT NULL, body BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at);
    """,
}
_COLUMNS = (
    "seq, request_id, app_id, url_path, base_url, {input}, priority, submitted_at, start_deadline, "
    "webhook_url, user_id, status, attempts, started_at, finished_at, expires_at, status_code, {body}, "
    "headers, error, error_type, inference_time_s"
)
# The index leaves out outcome bodies and finished jobs' inputs: only what the queue keeps in memory.
_LIGHT_COLUMNS = _COLUMNS.format(input="CASE WHEN status = 'COMPLETED' THEN '{}' ELSE input END", body="''")
_FULL_COLUMNS = _COLUMNS.format(input="input", body="body")


class SqliteJobStore:
    """``JobStore`` on one SQLite file (WAL); every call runs on a single dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._closed = False

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._db is None:
                raise RuntimeError(f"job store {self.path} is not open")
            with self._db:  # one transaction per call
                return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; WAL keeps it fast
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise RuntimeError(
                    f"{self.path} has job-store schema {version}, newer than this server's "
                    f"{SCHEMA_VERSION}; upgrade darkroom or use another data dir"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                db.executescript(f"BEGIN; {_MIGRATIONS[step]}; PRAGMA user_version = {step}; COMMIT;")
            db.isolation_level = "DEFERRED"  # implicit transactions again, committed by `with db`
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, disconnect)
        self._executor.shutdown(wait=True)

    async def add(self, job: JobRecord) -> int:
        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO jobs (request_id, app_id, url_path, base_url, input, priority, submitted_at, "
                "start_deadline, webhook_url, user_id, status, attempts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.request_id, job.app_id, job.url_path, job.base_url, json.dumps(job.input),
                    job.priority.value, job.submitted_at, job.start_deadline, job.webhook_url, job.user_id,
                    job.status.value, job.attempts,
                ),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

        return await self._call(insert)

    async def claim(self, request_id: str, *, started_at: float) -> int | None:
        def update(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, started_at = ? "
                "WHERE request_id = ? AND status = 'IN_QUEUE' RETURNING attempts",
                (started_at, request_id),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._call(update)

    async def requeue(self, request_id: str, *, attempts: int) -> None:
        await self._call(
            lambda db: db.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', attempts = ?, started_at = NULL WHERE request_id = ?",
                (attempts, request_id),
            )
        )

    async def finish(
        self, request_id: str, outcome: Outcome, *, finished_at: float, expires_at: float,
        logs: Sequence[dict[str, Any]], delivery: Delivery | None = None,
    ) -> None:  # fmt: skip
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, expires_at = ?, status_code = ?, "
                "body = ?, headers = ?, error = ?, error_type = ?, inference_time_s = ?, logs = ?, "
                "input = '{}' WHERE request_id = ?",
                (
                    finished_at, expires_at, outcome.status_code, outcome.body_json,
                    json.dumps(outcome.headers), outcome.error, outcome.error_type,
                    outcome.inference_time_s, json.dumps(list(logs)), request_id,
                ),
            )  # fmt: skip
            if delivery is not None:
                _insert_delivery(db, delivery)

        await self._call(update)

    async def get(self, request_id: str) -> JobRecord | None:
        def select(db: sqlite3.Connection) -> JobRecord | None:
            row = db.execute(
                f"SELECT {_FULL_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._call(select)

    async def logs(self, request_id: str) -> list[dict[str, Any]]:
        def select(db: sqlite3.Connection) -> list[dict[str, Any]]:
            row = db.execute("SELECT logs FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            return list(json.loads(row[0])) if row and row[0] else []

        return await self._call(select)

    async def index(self) -> list[JobRecord]:
        def select(db: sqlite3.Connection) -> list[JobRecord]:
            return [_record(row) for row in db.execute(f"SELECT {_LIGHT_COLUMNS} FROM jobs ORDER BY seq")]

        return await self._call(select)

    async def delete(self, request_ids: Sequence[str]) -> None:
        ids = [(request_id,) for request_id in request_ids]
        await self._call(lambda db: db.executemany("DELETE FROM jobs WHERE request_id = ?", ids))

    async def add_delivery(self, delivery: Delivery) -> None:
        await self._call(lambda db: _insert_delivery(db, delivery))

    async def due_deliveries(self, now: float, *, limit: int) -> list[Delivery]:
        def select(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                "SELECT request_id, user_id, url, body, next_attempt_at, attempts, id FROM deliveries "
                "WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            )
            return [Delivery(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

        return await self._call(select)

    async def next_delivery_at(self) -> float | None:
        def select(db: sqlite3.Connection) -> float | None:
            value = db.execute("SELECT MIN(next_attempt_at) FROM deliveries").fetchone()[0]
            return None if value is None else float(value)

        return await self._call(select)

    async def reschedule_delivery(self, delivery_id: int, *, attempts: int, next_attempt_at: float) -> None:
        await self._call(
            lambda db: db.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ? WHERE id = ?",
                (attempts, next_attempt_at, delivery_id),
            )
        )

    async def delete_delivery(self, delivery_id: int) -> None:
        await self._call(lambda db: db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)))


def _insert_delivery(db: sqlite3.Connection, d: Delivery) -> None:
    db.execute(
        "INSERT INTO deliveries (request_id, user_id, url, body, attempts, next_attempt_at) "
        "VALUES (?,?,?,?,?,?)",
        (d.request_id, d.user_id, d.url, d.body, d.attempts, d.next_attempt_at),
    )


def _record(row: Sequence[Any]) -> JobRecord:
    (seq, request_id, app_id, url_path, base_url, input_json, priority, submitted_at, start_deadline,
     webhook_url, user_id, status, attempts, started_at, finished_at, expires_at, status_code, body,
     headers, error, error_type, inference_time_s) = row  # fmt: skip
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
        outcome=outcome,
    )  # fmt: skip

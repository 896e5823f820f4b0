"""``SqliteJobStore``: the ``JobStore`` on one SQLite file (WAL), for a single host.

Every sqlite call runs on one dedicated thread, one transaction per call. The schema version is the
file's ``user_version``; newer files are refused, older ones migrated forward at open.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from server.queue.accounts import COST_BUDGET, ROW_COST
from server.queue.accounts import SCHEMA as ACCOUNTS_SCHEMA
from server.queue.store import (
    FULL_COLUMNS,
    LIGHT_COLUMNS,
    Delivery,
    Expected,
    JobRecord,
    JobStatus,
    Outcome,
    record_from_row,
)

T = TypeVar("T")

SCHEMA_VERSION = 5
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
    # The fleet's columns (PostgreSQL uses them; here they keep one row shape for both stores).
    2: "ALTER TABLE jobs ADD COLUMN host_id TEXT; ALTER TABLE jobs ADD COLUMN pinned_host TEXT;",
    # Managed keys and usage (server/queue/accounts.py).
    3: ACCOUNTS_SCHEMA.format(t="", real="REAL"),
    4: COST_BUDGET.format(t="", real="REAL"),
    5: ROW_COST.format(t="", real="REAL"),
}


class SqliteJobStore:
    """``JobStore`` on one SQLite file (WAL); every call runs on a single dedicated thread."""

    placeholder = "?"
    table_prefix = ""

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

    async def sql_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._call(lambda db: [tuple(row) for row in db.execute(sql, params)])

    async def sql_write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return await self._call(lambda db: sum(db.execute(sql, row).rowcount for row in rows))

    async def add(self, job: JobRecord) -> int:
        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO jobs (request_id, app_id, url_path, base_url, input, priority, submitted_at, "
                "start_deadline, webhook_url, user_id, status, attempts, pinned_host) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.request_id, job.app_id, job.url_path, job.base_url, json.dumps(job.input),
                    job.priority.value, job.submitted_at, job.start_deadline, job.webhook_url, job.user_id,
                    job.status.value, job.attempts, job.pinned_host,
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

    async def requeue(self, request_id: str, *, attempts: int, owner: str | None = None) -> bool:
        where, values = Expected(JobStatus.IN_PROGRESS, owner).where("?")

        def update(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', attempts = ?, started_at = NULL, host_id = NULL "
                    f"WHERE request_id = ?{where}",
                    (attempts, request_id, *values),
                ).rowcount
                > 0
            )

        return await self._call(update)

    async def finish(
        self, request_id: str, outcome: Outcome, *, finished_at: float, expires_at: float,
        logs: Sequence[dict[str, Any]], delivery: Delivery | None = None, expect: Expected | None = None,
    ) -> bool:  # fmt: skip
        where, values = expect.where("?") if expect else ("", ())

        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, expires_at = ?, status_code = ?, "
                "body = ?, headers = ?, error = ?, error_type = ?, inference_time_s = ?, logs = ?, "
                f"input = '{{}}' WHERE request_id = ?{where}",
                (
                    finished_at, expires_at, outcome.status_code, outcome.body_json,
                    json.dumps(outcome.headers), outcome.error, outcome.error_type,
                    outcome.inference_time_s, json.dumps(list(logs)), request_id, *values,
                ),
            )  # fmt: skip
            if cursor.rowcount == 0:
                return False
            if delivery is not None:
                _insert_delivery(db, delivery)
            return True

        return await self._call(update)

    async def get(self, request_id: str) -> JobRecord | None:
        def select(db: sqlite3.Connection) -> JobRecord | None:
            row = db.execute(
                f"SELECT {FULL_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)
            ).fetchone()
            return None if row is None else record_from_row(row)

        return await self._call(select)

    async def logs(self, request_id: str) -> list[dict[str, Any]]:
        def select(db: sqlite3.Connection) -> list[dict[str, Any]]:
            row = db.execute("SELECT logs FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            return list(json.loads(row[0])) if row and row[0] else []

        return await self._call(select)

    async def index(self) -> list[JobRecord]:
        def select(db: sqlite3.Connection) -> list[JobRecord]:
            rows = db.execute(f"SELECT {LIGHT_COLUMNS} FROM jobs ORDER BY seq")
            return [record_from_row(row) for row in rows]

        return await self._call(select)

    async def delete(self, request_ids: Sequence[str]) -> None:
        ids = [(request_id,) for request_id in request_ids]
        await self._call(lambda db: db.executemany("DELETE FROM jobs WHERE request_id = ?", ids))

    async def add_delivery(self, delivery: Delivery) -> None:
        await self._call(lambda db: _insert_delivery(db, delivery))

    async def lease_deliveries(self, now: float, *, lease_s: float, limit: int) -> list[Delivery]:
        def lease(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                "SELECT request_id, user_id, url, body, next_attempt_at, attempts, id FROM deliveries "
                "WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE deliveries SET next_attempt_at = ? WHERE id = ?",
                [(now + lease_s, r[6]) for r in rows],
            )
            return [Delivery(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

        return await self._call(lease)

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

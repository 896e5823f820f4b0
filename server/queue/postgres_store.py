"""``PostgresJobStore``: the ``JobStore`` on PostgreSQL (psycopg 3, async), shared by a fleet of hosts.

``DARKROOM_DATABASE_URL=postgresql://user:password@host:5432/db`` selects it. The schema lives in the
``darkroom`` schema of that database and is created and migrated by darkroom at open: each step of
``MIGRATIONS`` runs once, in order, in one transaction, under an advisory lock so that hosts starting
together do not race; the version reached is in ``darkroom.schema_version``. A database migrated by
a newer darkroom is refused, as SQLite files are.

Every call is one transaction on a connection from a small pool.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.errors import StoreUnavailableError
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

logger = logging.getLogger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]

MIGRATION_LOCK_ID = 0x6461726B  # "dark": pg_advisory_xact_lock key held while migrating
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE darkroom.jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id TEXT NOT NULL UNIQUE,
        app_id TEXT NOT NULL, url_path TEXT NOT NULL, base_url TEXT NOT NULL,
        input TEXT NOT NULL, priority TEXT NOT NULL, submitted_at DOUBLE PRECISION NOT NULL,
        start_deadline DOUBLE PRECISION, webhook_url TEXT, user_id TEXT NOT NULL,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, expires_at DOUBLE PRECISION,
        status_code INTEGER, body TEXT, headers TEXT, error TEXT, error_type TEXT,
        inference_time_s DOUBLE PRECISION, logs TEXT
    );
    CREATE INDEX jobs_status ON darkroom.jobs (status, priority, seq);
    CREATE INDEX jobs_expiry ON darkroom.jobs (expires_at);
    CREATE TABLE darkroom.deliveries (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id TEXT NOT NULL, user_id TEXT NOT NULL, url TEXT NOT NULL, body BYTEA NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX deliveries_due ON darkroom.deliveries (next_attempt_at);
    """,
    # The fleet: which host runs a job under its lease, the hosts and what they can run, and the live
    # events too large for a NOTIFY payload (server/queue/fleet.py).
    """
    ALTER TABLE darkroom.jobs ADD COLUMN host_id TEXT, ADD COLUMN pinned_host TEXT,
        ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX jobs_host ON darkroom.jobs (host_id) WHERE status = 'IN_PROGRESS';
    CREATE TABLE darkroom.hosts (
        host_id TEXT PRIMARY KEY, name TEXT NOT NULL, apps TEXT[] NOT NULL DEFAULT '{}',
        warm TEXT[] NOT NULL DEFAULT '{}', idle_workers INTEGER NOT NULL DEFAULT 0,
        started_at DOUBLE PRECISION NOT NULL, lease_expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE UNLOGGED TABLE darkroom.relay (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL
    );
    """,
    # Published workflows, shared by the fleet's hosts (server/queue/fleet_workflows.py).
    """
    CREATE TABLE darkroom.workflows (
        name TEXT NOT NULL, number INTEGER NOT NULL, published_at DOUBLE PRECISION NOT NULL,
        prompt TEXT NOT NULL, workflow TEXT, PRIMARY KEY (name, number)
    );
    """,
    # The fleet's node-pack lock, one row (server/queue/fleet_packs.py).
    """
    CREATE TABLE darkroom.node_packs (
        id INTEGER PRIMARY KEY CHECK (id = 1), lock TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    # Managed keys and usage, shared by the fleet's hosts (server/queue/accounts.py).
    ACCOUNTS_SCHEMA.format(t="darkroom.", real="DOUBLE PRECISION"),
    COST_BUDGET.format(t="darkroom.", real="DOUBLE PRECISION"),  # the keys' monthly USD budget
    ROW_COST.format(t="darkroom.", real="DOUBLE PRECISION"),  # each row's worker and cost when written
)
# LISTEN/NOTIFY channel of the fleet: job changes, cancels, relayed live events, published workflows
CHANNEL = "darkroom"
DB_NOW = "extract(epoch from clock_timestamp())"  # leases are timed on the database's clock
SCHEMA_VERSION = len(MIGRATIONS)
STORE_TIMEOUT_S = 15.0  # the longest a call waits for a connection and its answer


def redacted(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def migrate(conn: Conn) -> int:
    """Bring the ``darkroom`` schema to ``SCHEMA_VERSION``; the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        await conn.execute("CREATE SCHEMA IF NOT EXISTS darkroom")
        await conn.execute("CREATE TABLE IF NOT EXISTS darkroom.schema_version (version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT max(version) FROM darkroom.schema_version")).fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has job-store schema {found}, newer than this server's {SCHEMA_VERSION}; "
                "upgrade darkroom or point DARKROOM_DATABASE_URL at another database"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1].encode())  # several statements: simple protocol
            await conn.execute("INSERT INTO darkroom.schema_version (version) VALUES (%s)", (version,))
            logger.info("job store: migrated the database to schema %d", version)
    return found


class PostgresJobStore:
    """``JobStore`` on a PostgreSQL database; see the module docstring."""

    placeholder = "%s"
    table_prefix = "darkroom."

    def __init__(self, url: str, *, pool_max_size: int = 4, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self.url, self.timeout_s = url, timeout_s
        # This process in the fleet: jobs it claims carry it, and its NOTIFYs name it as their origin.
        self.host_id = uuid.uuid4().hex
        self.pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_max_size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=30.0)
        except Exception as e:
            raise RuntimeError(f"cannot connect to the job store at {redacted(self.url)}: {e}") from e
        async with self.pool.connection() as conn:
            await migrate(conn)

    async def close(self) -> None:
        await self.pool.close()

    async def notify_job(self, conn: Conn, request_id: str) -> None:
        """Tell every host (on commit) that this job changed, so each refreshes its index."""
        await self.notify(conn, "job", request_id)

    async def notify(self, conn: Conn, kind: str, key: str) -> None:
        """Tell every other host (on commit) that the ``kind`` thing named ``key`` changed."""
        payload = json.dumps({"k": kind, "id": key, "h": self.host_id})
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    async def call(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` in one transaction; 503 (``StoreUnavailableError``) if the database refuses, fails or
        does not answer within ``timeout_s``, so a request never waits on it for ever."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.pool.connection() as conn, conn.transaction():
                    return await fn(conn)
        except (TimeoutError, PoolTimeout, psycopg.OperationalError) as e:
            why = str(e).strip() or f"no answer in {self.timeout_s:g} s"
            raise StoreUnavailableError(
                f"The job store at {redacted(self.url)} is unavailable ({why}); try again shortly"
            ) from e

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(sql, params)

        await self.call(run)

    async def _one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        async def run(conn: Conn) -> tuple[Any, ...] | None:
            return await (await conn.execute(sql, params)).fetchone()

        return await self.call(run)

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def run(conn: Conn) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, params)).fetchall()

        return await self.call(run)

    async def sql_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._all(sql, params)

    async def sql_write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        async def run(conn: Conn) -> int:
            changed = 0
            for row in rows:
                changed += (await conn.execute(sql, row)).rowcount
            return changed

        return await self.call(run)

    async def add(self, job: JobRecord) -> int:
        async def insert(conn: Conn) -> int:
            row = await (
                await conn.execute(
                    "INSERT INTO darkroom.jobs (request_id, app_id, url_path, base_url, input, priority, "
                    "submitted_at, start_deadline, webhook_url, user_id, status, attempts, pinned_host) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING seq",
                    (
                        job.request_id,
                        job.app_id,
                        job.url_path,
                        job.base_url,
                        json.dumps(job.input),
                        job.priority.value,
                        job.submitted_at,
                        job.start_deadline,
                        job.webhook_url,
                        job.user_id,
                        job.status.value,
                        job.attempts,
                        job.pinned_host,
                    ),
                )  # fmt: skip
            ).fetchone()
            assert row is not None
            await self.notify_job(conn, job.request_id)
            return int(row[0])

        return await self.call(insert)

    async def claim(self, request_id: str, *, started_at: float) -> int | None:
        async def update(conn: Conn) -> int | None:
            row = await (
                await conn.execute(
                    "UPDATE darkroom.jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, "
                    "started_at = %s, host_id = %s WHERE request_id = %s AND status = 'IN_QUEUE' "
                    "RETURNING attempts",
                    (started_at, self.host_id, request_id),
                )
            ).fetchone()
            if row is not None:
                await self.notify_job(conn, request_id)
            return None if row is None else int(row[0])

        return await self.call(update)

    async def requeue(self, request_id: str, *, attempts: int, owner: str | None = None) -> bool:
        return await self.call(functools.partial(self.requeue_in, request_id, attempts=attempts, owner=owner))

    async def requeue_in(self, request_id: str, conn: Conn, *, attempts: int, owner: str | None) -> bool:
        """``requeue`` in the caller's transaction."""
        where, values = Expected(JobStatus.IN_PROGRESS, owner).where("%s")
        cursor = await conn.execute(
            "UPDATE darkroom.jobs SET status = 'IN_QUEUE', attempts = %s, started_at = NULL, "
            f"host_id = NULL, cancel_requested = false WHERE request_id = %s{where}",
            (attempts, request_id, *values),
        )
        if cursor.rowcount > 0:
            await self.notify_job(conn, request_id)
        return cursor.rowcount > 0

    async def finish(
        self, request_id: str, outcome: Outcome, *, finished_at: float, expires_at: float,
        logs: Sequence[dict[str, Any]], delivery: Delivery | None = None, expect: Expected | None = None,
    ) -> bool:  # fmt: skip
        where, values = expect.where("%s") if expect else ("", ())

        async def update(conn: Conn) -> bool:
            cursor = await conn.execute(
                "UPDATE darkroom.jobs SET status = 'COMPLETED', finished_at = %s, expires_at = %s, "
                "status_code = %s, body = %s, headers = %s, error = %s, error_type = %s, "
                f"inference_time_s = %s, logs = %s, input = '{{}}' WHERE request_id = %s{where}",
                (
                    finished_at, expires_at, outcome.status_code, outcome.body_json,
                    json.dumps(outcome.headers), outcome.error, outcome.error_type,
                    outcome.inference_time_s, json.dumps(list(logs)), request_id, *values,
                ),
            )  # fmt: skip
            if cursor.rowcount == 0:
                return False
            if delivery is not None:
                await _insert_delivery(conn, delivery)
            await self.notify_job(conn, request_id)
            return True

        return await self.call(update)

    async def get(self, request_id: str) -> JobRecord | None:
        row = await self._one(
            f"SELECT {FULL_COLUMNS} FROM darkroom.jobs WHERE request_id = %s", (request_id,)
        )
        return None if row is None else record_from_row(row)

    async def logs(self, request_id: str) -> list[dict[str, Any]]:
        row = await self._one("SELECT logs FROM darkroom.jobs WHERE request_id = %s", (request_id,))
        return list(json.loads(row[0])) if row and row[0] else []

    async def index(self) -> list[JobRecord]:
        rows = await self._all(f"SELECT {LIGHT_COLUMNS} FROM darkroom.jobs ORDER BY seq")
        return [record_from_row(row) for row in rows]

    async def delete(self, request_ids: Sequence[str]) -> None:
        await self._execute("DELETE FROM darkroom.jobs WHERE request_id = ANY(%s)", (list(request_ids),))

    async def add_delivery(self, delivery: Delivery) -> None:
        await self.call(lambda conn: _insert_delivery(conn, delivery))

    async def lease_deliveries(self, now: float, *, lease_s: float, limit: int) -> list[Delivery]:
        # SKIP LOCKED: hosts leasing at the same moment take different deliveries, never the same one.
        rows = await self._all(
            "WITH due AS (SELECT id FROM darkroom.deliveries WHERE next_attempt_at <= %s "
            "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE darkroom.deliveries d SET next_attempt_at = %s FROM due WHERE d.id = due.id "
            "RETURNING d.request_id, d.user_id, d.url, d.body, d.next_attempt_at, d.attempts, d.id",
            (now, limit, now + lease_s),
        )
        return [Delivery(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    async def next_delivery_at(self) -> float | None:
        row = await self._one("SELECT min(next_attempt_at) FROM darkroom.deliveries", ())
        return None if row is None or row[0] is None else float(row[0])

    async def reschedule_delivery(self, delivery_id: int, *, attempts: int, next_attempt_at: float) -> None:
        await self._execute(
            "UPDATE darkroom.deliveries SET attempts = %s, next_attempt_at = %s WHERE id = %s",
            (attempts, next_attempt_at, delivery_id),
        )

    async def delete_delivery(self, delivery_id: int) -> None:
        await self._execute("DELETE FROM darkroom.deliveries WHERE id = %s", (delivery_id,))


async def _insert_delivery(conn: Conn, d: Delivery) -> None:
    await conn.execute(
        "INSERT INTO darkroom.deliveries (request_id, user_id, url, body, attempts, next_attempt_at) "
        "VALUES (%s,%s,%s,%s,%s,%s)",
        (d.request_id, d.user_id, d.url, d.body, d.attempts, d.next_attempt_at),
    )

"""A fleet of darkroom hosts on one PostgreSQL job store: membership, leases, claims and notifications.

Every host (one ``darkroom serve`` process) has a row in ``darkroom.hosts`` holding its lease, the apps
whose model files it has, the apps its workers have warm and how many workers are idle. It renews the
lease every third of ``host_lease_s``. Any host that finds a lease expired deletes the row and puts
the dead host's running jobs back in the queue (or fails those that were already a re-run), so a
request outlives its host and runs once more elsewhere within ``host_lease_s`` of the death.

A host claims its next job with ``FOR UPDATE SKIP LOCKED``: the oldest of the highest priority among
the apps it can run, so two hosts never take the same job. A job whose app a live, idle host has warm
is left to that host for ``WARM_AFFINITY_S`` before a cold host takes it.

A host that cannot renew its lease in time (the database unreachable, or its row reaped) stops
running its jobs without writing anything (they are someone else's now: ``fenced``) and joins again
under a new host id; its finishing writes are conditional on still owning the job, so a job is never
recorded by two hosts.

One LISTEN connection per host carries, on the channel ``darkroom``: job changes (every host keeps an
index of all jobs: status answers never touch the database), cancels of a job running elsewhere, the
live events (progress, previews, logs) of each running job, relayed to every other host's
subscribers, and changes of other things (published workflows), passed to their ``listeners``. An
event over NOTIFY's payload limit travels through the unlogged ``darkroom.relay`` table. A missed
notification is caught by a full re-read of the index every ``RESYNC_INTERVAL_S`` and after the
connection comes back (when the listeners also read everything again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from server.engine.supervisor import Supervisor
from server.generation.generator import Generator
from server.queue.postgres_store import CHANNEL, DB_NOW, Conn, PostgresJobStore
from server.queue.store import LIGHT_COLUMNS, JobRecord, record_from_row
from server.workflows.mapping import Endpoint

logger = logging.getLogger(__name__)

WARM_AFFINITY_S = 2.0  # how long a job waits for an idle host that has its model warm
RESYNC_INTERVAL_S = 30.0  # the slow fallback behind the notifications
RELAY_KEEP_S = 60.0  # how long an oversized relayed event stays readable
_NOTIFY_MAX_BYTES = 7900  # PostgreSQL's NOTIFY payload limit is 8000 bytes
_RELAY_BATCH = 100
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Capabilities:
    """What this host offers the fleet now."""

    apps: Sequence[str]  # apps whose model files are here
    warm: Sequence[str]  # apps a worker ran last (its models are loaded)
    idle_workers: int


def capabilities_of(
    served: Mapping[str, Endpoint], generator: Generator, supervisor: Supervisor
) -> Capabilities:
    """What a host offers: the apps whose model files and verified node packs are here, the apps whose
    models a worker has loaded, and how many workers are free."""
    apps = [
        app
        for app, endpoint in served.items()
        if generator.has_models(endpoint) and generator.has_packs(endpoint)
    ]
    loaded = supervisor.warm_keys()
    warm = [app for app in apps if served[app].models and served[app].models_key in loaded]
    return Capabilities(apps, warm, supervisor.idle_workers)


class Member(Protocol):
    """What the fleet tells this host's queue."""

    def job_changed(self, request_id: str) -> None: ...
    def cancel_requested(self, request_id: str) -> None: ...
    def event_relayed(self, request_id: str, event: dict[str, Any]) -> None: ...
    def fenced(self) -> None: ...
    def resync(self) -> None: ...
    def wake(self) -> None: ...
    async def orphaned(self, records: list[JobRecord]) -> None: ...


class Fleet:
    """This host's membership of the fleet; see the module docstring."""

    def __init__(
        self, store: PostgresJobStore, *, name: str, lease_s: float,
        capabilities: Callable[[], Capabilities], max_attempts: int,
    ) -> None:  # fmt: skip
        self.store, self.name, self.lease_s = store, name, lease_s
        self.capabilities, self.max_attempts = capabilities, max_attempts
        self.runnable_apps: frozenset[str] = frozenset()  # apps some live host can run (last heartbeat)
        self._member: Member | None = None
        self._offer = Capabilities((), (), 0)
        self._renewed_at = time.monotonic()
        self._joined = False  # this host id holds a lease row: only then may it claim
        self._relay: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._beat_now = asyncio.Event()
        # kind -> called with the changed key, or None after a reconnect (anything may have changed)
        self.listeners: dict[str, Callable[[str | None], Awaitable[None]]] = {}
        # Its own connections: a burst of submits waiting for the store's pool must not delay a
        # heartbeat past the lease.
        self._pool = AsyncConnectionPool(
            store.url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def host_id(self) -> str:
        return self.store.host_id

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, member: Member) -> None:
        """Join: replace this host's previous incarnation (its jobs run again at once), then listen."""
        self._member = member
        await self._pool.open(wait=True, timeout=30.0)
        listening = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen(listening), name="fleet-listen"),
            asyncio.create_task(self._send_relayed(), name="fleet-relay"),
        ]
        await listening.wait()  # nothing committed from here on is missed
        self.store.host_id = uuid.uuid4().hex  # one id per membership: what ran before is an orphan
        await self._join(replace_previous=True)
        await self._reap()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="fleet-heartbeat"))

    async def stop(self) -> None:
        """Leave: stop listening and give up the lease (call after the queue requeued its jobs)."""
        for task in self._tasks:
            task.cancel()
        try:  # a database that does not answer must not hold the shutdown: the lease ends anyway
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._execute("DELETE FROM darkroom.hosts WHERE host_id = %s", (self.host_id,))
        except TimeoutError:
            logger.warning("fleet: leaving took over %g s; the lease will lapse instead", STOP_TIMEOUT_S)
        await self._pool.close(timeout=STOP_TIMEOUT_S)

    async def _join(self, *, replace_previous: bool = False) -> None:
        self._offer = self.capabilities()

        async def join(conn: Conn) -> None:
            if replace_previous:
                await conn.execute("DELETE FROM darkroom.hosts WHERE name = %s", (self.name,))
            await conn.execute(
                "INSERT INTO darkroom.hosts (host_id, name, apps, warm, idle_workers, started_at, "
                f"lease_expires_at) VALUES (%s, %s, %s, %s, %s, {DB_NOW}, {DB_NOW} + %s)",
                (self.host_id, self.name, list(self._offer.apps), list(self._offer.warm),
                 self._offer.idle_workers, self.lease_s),
            )  # fmt: skip

        sent_at = time.monotonic()
        await self._call(join)
        self._renewed_at, self._joined = sent_at, True
        logger.info("fleet: joined as %s (%s), lease %g s", self.host_id, self.name, self.lease_s)

    # -- claims and cancels -----------------------------------------------------------------------

    async def claim_next(self, *, now: float) -> JobRecord | None:
        """Take the next job this host may run (IN_PROGRESS, this host's, one attempt more), or None."""
        offer = self._offer
        if not self._joined:
            return None

        async def claim(conn: Conn) -> JobRecord | None:
            row = await (
                await conn.execute(
                    "UPDATE darkroom.jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, "
                    "started_at = %(now)s, host_id = %(me)s, cancel_requested = false WHERE seq = ("
                    " SELECT q.seq FROM darkroom.jobs q WHERE q.status = 'IN_QUEUE'"
                    " AND q.app_id = ANY(%(apps)s) AND (q.pinned_host IS NULL OR q.pinned_host = %(name)s)"
                    " AND (q.app_id = ANY(%(warm)s) OR q.submitted_at < %(now)s - %(affinity)s"
                    "  OR NOT EXISTS (SELECT 1 FROM darkroom.hosts h WHERE h.host_id <> %(me)s"
                    f"   AND h.lease_expires_at > {DB_NOW} AND h.idle_workers > 0"
                    "   AND q.app_id = ANY(h.warm)))"
                    " ORDER BY (q.priority = 'low'), q.seq LIMIT 1 FOR UPDATE OF q SKIP LOCKED)"
                    f" RETURNING {LIGHT_COLUMNS}",
                    {
                        "now": now,
                        "me": self.host_id,
                        "apps": list(offer.apps),
                        "name": self.name,
                        "warm": list(offer.warm),
                        "affinity": WARM_AFFINITY_S,
                    },
                )  # fmt: skip
            ).fetchone()
            if row is None:
                return None
            record = record_from_row(row)
            await self.store.notify_job(conn, record.request_id)
            return record

        claimed: JobRecord | None = await self._call(claim)
        return claimed

    def can_run(self, app_id: str) -> bool:
        return app_id in self._offer.apps

    def offer_changed(self) -> None:
        """The apps here changed (a workflow published or unpublished): claim by the new offer at once,
        and tell the fleet now rather than at the next heartbeat."""
        self._offer = self.capabilities()
        self._beat_now.set()
        if self._member is not None:
            self._member.wake()

    async def hosts(self) -> list[dict[str, Any]]:
        """The fleet's live hosts as their last heartbeats left them, this one marked; 503 if the
        database does not answer."""

        async def select(conn: Conn) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(
                f"SELECT host_id, name, apps, warm, idle_workers, started_at, lease_expires_at - {DB_NOW} "
                f"FROM darkroom.hosts WHERE lease_expires_at > {DB_NOW} ORDER BY name, started_at"
            )
            return await cursor.fetchall()

        return [
            {
                "name": name, "host_id": host_id, "this_host": host_id == self.host_id,
                "started_at": started_at, "lease_left_s": round(left_s, 1), "apps": sorted(apps),
                "warm": sorted(warm), "idle_workers": idle,
            }
            for host_id, name, apps, warm, idle, started_at, left_s in await self.store.call(select)
        ]  # fmt: skip

    async def request_cancel(self, request_id: str) -> None:
        """Ask the host running the job to interrupt it (NOTIFY now; its heartbeat checks the flag too)."""

        async def flag(conn: Conn) -> None:
            await conn.execute(
                "UPDATE darkroom.jobs SET cancel_requested = true WHERE request_id = %s", (request_id,)
            )
            payload = json.dumps({"k": "cancel", "id": request_id, "h": self.host_id})
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

        await self._call(flag)

    def relay(self, request_id: str, event: dict[str, Any]) -> None:
        """Send one live event of a job running here to the other hosts (in order, in the background)."""
        self._relay.put_nowait((request_id, event))

    # -- the heartbeat: lease, reaping, flags -----------------------------------------------------

    async def _heartbeat(self) -> None:
        beat: asyncio.Task[None] | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lease_s / 3):
                        await self._beat_now.wait()
                self._beat_now.clear()
                if beat is None or beat.done():
                    beat = asyncio.create_task(self._beat_or_log(), name="fleet-beat")
                # A database that stops answering (a partition: no error, no reply) must not hold the
                # fence past its time: wait for the beat only until then; it goes on in the background.
                fence_in_s = self._renewed_at + self.lease_s * 2 / 3 - time.monotonic()
                await asyncio.wait({beat}, timeout=max(0.0, fence_in_s))
                if self._joined and time.monotonic() - self._renewed_at > self.lease_s * 2 / 3:
                    self._fence("its lease could not be renewed in time")
                    beat.cancel()  # a renewal that comes now would be for a host that no longer runs
        finally:
            if beat is not None:
                beat.cancel()

    async def _beat_or_log(self) -> None:
        try:
            await self._beat()
        except Exception as e:
            logger.warning("fleet: heartbeat failed: %s", e)

    async def _beat(self) -> None:
        if self._member is None:
            return
        if not self._joined:
            await self._join()
        self._offer = self.capabilities()
        sent_at = time.monotonic()  # the lease runs from when the database ran it: no earlier than now
        renewed = await self._fetch(
            f"UPDATE darkroom.hosts SET lease_expires_at = {DB_NOW} + %s, apps = %s, warm = %s, "
            "idle_workers = %s WHERE host_id = %s RETURNING 1",
            (self.lease_s, list(self._offer.apps), list(self._offer.warm), self._offer.idle_workers,
             self.host_id),
        )  # fmt: skip
        if not renewed:
            self._fence("another host found its lease expired")
            await self._join()
        else:
            self._renewed_at = sent_at
        await self._reap()
        for (request_id,) in await self._fetch(
            "SELECT request_id FROM darkroom.jobs WHERE status = 'IN_PROGRESS' AND host_id = %s "
            "AND cancel_requested",
            (self.host_id,),
        ):
            self._member.cancel_requested(request_id)

    def _fence(self, why: str) -> None:
        """Stop this host's runs without a write and take a new identity: they are the fleet's now."""
        assert self._member is not None
        logger.error("fleet: host %s is fenced (%s): its running jobs run again elsewhere", self.host_id, why)
        self._member.fenced()
        self.store.host_id, self._joined = uuid.uuid4().hex, False

    async def _reap(self) -> None:
        """Delete expired hosts, requeue their running jobs, hand back the ones to fail; note which
        apps the live hosts can run."""
        assert self._member is not None
        await self._execute(f"DELETE FROM darkroom.hosts WHERE lease_expires_at < {DB_NOW}", ())
        await self._execute(f"DELETE FROM darkroom.relay WHERE created_at < {DB_NOW} - %s", (RELAY_KEEP_S,))
        rows = await self._fetch(
            f"SELECT {LIGHT_COLUMNS} FROM darkroom.jobs j WHERE status = 'IN_PROGRESS' AND NOT EXISTS "
            "(SELECT 1 FROM darkroom.hosts h WHERE h.host_id = j.host_id) ORDER BY seq",
            (),
        )
        orphans = [record_from_row(row) for row in rows]
        for record in orphans:
            requeue = functools.partial(
                self.store.requeue_in, record.request_id, attempts=record.attempts, owner=record.host_id
            )
            if record.attempts < self.max_attempts and await self._call(requeue):
                logger.warning("fleet: request %s lost its host: queued again", record.request_id)
                self._member.job_changed(record.request_id)  # its NOTIFY is this host's own: skipped
        await self._member.orphaned([r for r in orphans if r.attempts >= self.max_attempts])
        apps = await self._fetch(
            f"SELECT DISTINCT unnest(apps) FROM darkroom.hosts WHERE lease_expires_at > {DB_NOW}", ()
        )
        self.runnable_apps = frozenset(app for (app,) in apps)

    # -- notifications ----------------------------------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        backoff_s = 0.5
        while True:
            try:
                conn = await AsyncConnection.connect(self.store.url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if listening.is_set():  # what was missed while disconnected
                        assert self._member is not None
                        self._member.resync()
                        for listener in self.listeners.values():
                            await self._tell(listener, None)
                    listening.set()
                    backoff_s = 0.5
                    await self._dispatch(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("fleet: notification connection lost (%s); reconnecting", e)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 10.0)

    async def _dispatch(self, conn: AsyncConnection[Any]) -> None:
        async for notify in conn.notifies():
            message = json.loads(notify.payload)
            if message.get("h") == self.host_id or self._member is None:
                continue
            kind, key = message["k"], message["id"]  # key: a request id, or what the kind names
            if kind == "job":
                self._member.job_changed(key)
            elif kind == "cancel":
                self._member.cancel_requested(key)
            elif kind == "ev":
                event = message.get("e") or await self._relayed(int(message["ref"]))
                if event is not None:
                    self._member.event_relayed(key, event)
            elif (listener := self.listeners.get(kind)) is not None:
                await self._tell(listener, key)

    async def _tell(self, listener: Callable[[str | None], Awaitable[None]], key: str | None) -> None:
        try:
            await listener(key)
        except Exception:
            logger.exception("fleet: a change of %s could not be taken in", key or "everything")

    async def _relayed(self, ref: int) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT payload FROM darkroom.relay WHERE id = %s", (ref,))
        return json.loads(rows[0][0]) if rows else None

    async def _send_relayed(self) -> None:
        while True:
            batch = [await self._relay.get()]
            while not self._relay.empty() and len(batch) < _RELAY_BATCH:
                batch.append(self._relay.get_nowait())
            try:
                await self._call(functools.partial(self._notify_events, batch=batch))
            except Exception as e:  # live events are best effort; the outcome is in the store
                logger.warning("fleet: %d live event(s) not relayed: %s", len(batch), e)

    async def _notify_events(self, conn: Conn, *, batch: list[tuple[str, dict[str, Any]]]) -> None:
        for request_id, event in batch:
            payload = json.dumps({"k": "ev", "id": request_id, "h": self.host_id, "e": event})
            if len(payload.encode()) > _NOTIFY_MAX_BYTES:
                row = await (
                    await conn.execute(
                        "INSERT INTO darkroom.relay (created_at, payload) "
                        f"VALUES ({DB_NOW}, %s) RETURNING id",
                        (json.dumps(event),),
                    )
                ).fetchone()
                assert row is not None
                payload = json.dumps({"k": "ev", "id": request_id, "h": self.host_id, "ref": row[0]})
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    # -- database helpers -------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Conn], Any]) -> Any:
        async with self._pool.connection() as conn, conn.transaction():
            return await fn(conn)

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(sql, params)

        await self._call(run)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def run(conn: Conn) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, params)).fetchall()

        return list(await self._call(run))

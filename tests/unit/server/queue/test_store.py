"""The job store (real SQLite) and the queue's scheduling, recovery and retention, with a fake worker."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from server.engine import client as cc
from server.engine.models import load_manifest
from server.generation.progress import ProgressHub
from server.media.outputs import OutputStore
from server.queue.fleet import Capabilities, Fleet
from server.queue.job_queue import MAX_ATTEMPTS, JobQueue
from server.queue.postgres_store import PostgresJobStore
from server.queue.store import Delivery, Expected, JobRecord, JobStatus, JobStore, Outcome, Priority
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, load_endpoints

APP = "darkroom/demo-flux-2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeGenerator:
    """``Generator.run`` without a worker (the process boundary): one run at a time, ComfyUI-like
    events, and with ``hold`` each run waits for ``release(request_id)``."""

    def __init__(self, *, hold: bool) -> None:
        self.hold = hold
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}
        self.first_event: asyncio.Event | None = None  # set: each run waits for it before its first event
        self._worker = asyncio.Lock()

    def release(self, request_id: str) -> None:
        self._gates.setdefault(request_id, asyncio.Event()).set()

    async def wait_started(self, request_id: str) -> None:
        await until(lambda: request_id in self.started)

    async def run(
        self, endpoint: Endpoint, request: Any, *, request_id: str, base_url: str, on_event: Any
    ) -> dict[str, Any]:
        async with self._worker:
            if self.first_event is not None:
                await self.first_event.wait()
            await on_event(cc.Started(request_id))
            self.started.append(request_id)
            try:
                if self.hold:
                    await self._gates.setdefault(request_id, asyncio.Event()).wait()
            except asyncio.CancelledError:
                self.cancelled.append(request_id)
                raise
            self.finished.append(request_id)
            return {"images": [], "prompt": request.prompt}


@pytest.fixture(scope="module")
def endpoints() -> dict[str, Endpoint]:
    return load_endpoints(WORKFLOWS_DIR, load_manifest())


@pytest_asyncio.fixture
async def store(new_job_store: Callable[[], JobStore]) -> AsyncIterator[JobStore]:
    store = new_job_store()
    await store.open()
    yield store
    await store.close()


def record(request_id: str, priority: Priority = Priority.NORMAL, **fields: object) -> JobRecord:
    job = JobRecord(request_id, APP, APP, "http://h", {"prompt": request_id}, priority=priority)
    for name, value in fields.items():
        setattr(job, name, value)
    return job


def make_queue(
    store: JobStore,
    endpoints: dict[str, Endpoint],
    tmp_path: Path,
    *,
    hold: bool,
    clock: Clock | None = None,
) -> tuple[JobQueue, FakeGenerator]:
    fake = FakeGenerator(hold=hold)
    queue = JobQueue(
        store, fake, ProgressHub(), endpoints, outputs=OutputStore(tmp_path / "outputs"), retention_s=60.0,
        shutdown_grace_s=0.0, clock=clock or Clock(), fleet=fleet_of(store, endpoints),
    )  # fmt: skip
    return queue, fake


def fleet_of(
    store: JobStore, endpoints: dict[str, Endpoint], name: str = "test-host", lease_s: float = 30.0
) -> Fleet | None:
    """On PostgreSQL the queue runs as a fleet host (as ``create_app`` makes it), able to run every app;
    a queue made again with the same name is the same host restarted."""
    if not isinstance(store, PostgresJobStore):
        return None
    offer = Capabilities(sorted(endpoints), (), 1)
    return Fleet(store, name=name, lease_s=lease_s, capabilities=lambda: offer, max_attempts=MAX_ATTEMPTS)


async def until(predicate: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_store_round_trip_claim_finish_and_schema(
    store: JobStore, new_job_store: Callable[[], JobStore], database_url: str, tmp_path: Path
) -> None:
    first, second = await store.add(record("a")), await store.add(record("b"))
    assert second > first
    assert await store.claim("a", started_at=5.0) == 1
    assert await store.claim("a", started_at=6.0) is None  # only an IN_QUEUE job can be claimed
    outcome = Outcome(200, json.dumps({"images": []}), {}, inference_time_s=0.5)
    delivery = Delivery("a", "darkroom", "https://hook", b"{}", next_attempt_at=7.0)
    log = {"message": "hi", "level": "INFO", "source": "USER", "timestamp": "t"}
    await store.finish("a", outcome, finished_at=7.0, expires_at=67.0, logs=[log], delivery=delivery)

    full = await store.get("a")
    assert full is not None and full.status is JobStatus.COMPLETED and full.outcome == outcome
    assert full.attempts == 1 and await store.logs("a") == [log]
    light = {job.request_id: job for job in await store.index()}
    assert light["a"].outcome is not None and light["a"].outcome.body_json == "" and light["a"].input == {}
    assert light["b"].input == {"prompt": "b"} and light["b"].status is JobStatus.IN_QUEUE
    assert await store.lease_deliveries(6.9, lease_s=20.0, limit=10) == []
    assert await store.next_delivery_at() == 7.0
    (due,) = await store.lease_deliveries(7.0, lease_s=20.0, limit=10)
    assert (due.request_id, due.body, await store.next_delivery_at()) == ("a", b"{}", 27.0)
    assert await store.lease_deliveries(26.9, lease_s=20.0, limit=10) == []  # leased: nobody else sends it

    # Outcomes are written only where expected: a queued job's cancel loses to a claim, and a running
    # job's outcome only counts from the host that runs it.
    assert not await store.finish("b", outcome, finished_at=8.0, expires_at=68.0, logs=[],
                                  expect=Expected(JobStatus.IN_PROGRESS))  # fmt: skip
    assert await store.claim("b", started_at=8.0) == 1
    assert not await store.finish("b", outcome, finished_at=8.0, expires_at=68.0, logs=[],
                                  expect=Expected(JobStatus.IN_QUEUE))  # fmt: skip
    assert not await store.finish("b", outcome, finished_at=8.0, expires_at=68.0, logs=[],
                                  expect=Expected(JobStatus.IN_PROGRESS, "another-host"))  # fmt: skip
    assert not await store.requeue("b", attempts=0, owner="another-host")
    owner = (await store.get("b")).host_id  # type: ignore[union-attr]
    assert await store.requeue("b", attempts=0, owner=owner)
    assert (await store.get("b")).status is JobStatus.IN_QUEUE  # type: ignore[union-attr]

    await store.close()
    found = _bump_schema_version(database_url, tmp_path, to=99)
    # 2: the fleet's columns; 3 (PostgreSQL): published workflows; 4: node packs; then keys and usage,
    # then the keys' cost budget, then each usage row's worker and cost
    assert found == (7 if database_url else 5)
    newer = new_job_store()
    with pytest.raises(RuntimeError, match="schema 99, newer"):
        await newer.open()
    await newer.close()


def _bump_schema_version(database_url: str, tmp_path: Path, *, to: int) -> int:
    """Pretend a newer darkroom migrated the store; the version it had."""
    if not database_url:
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            db.execute(f"PRAGMA user_version = {to}")
            return version
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT max(version) FROM darkroom.schema_version").fetchone()
        conn.execute("INSERT INTO darkroom.schema_version (version) VALUES (%s)", (to,))
        return int(row[0]) if row else 0


async def test_priority_then_fifo_and_accurate_positions(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    queue, fake = make_queue(store, endpoints, tmp_path, hold=True)
    await queue.start()
    ep = endpoints[APP]
    running = (await queue.submit(ep, {"prompt": "r"}, url_path=APP, base_url="http://h")).request_id
    await fake.wait_started(running)
    ids = {}
    for name, priority in [
        ("low1", Priority.LOW),
        ("n1", Priority.NORMAL),
        ("low2", Priority.LOW),
        ("n2", Priority.NORMAL),
    ]:
        ids[name] = (
            await queue.submit(ep, {"prompt": name}, url_path=APP, base_url="http://h", priority=priority)
        ).request_id
    assert {name: queue.position(rid) for name, rid in ids.items()} == {
        "n1": 0,
        "n2": 1,
        "low1": 2,
        "low2": 3,
    }
    assert queue.queue_length() == 4 and queue.position(running) is None

    order = [running, ids["n1"], ids["n2"], ids["low1"], ids["low2"]]
    for request_id in order:
        await fake.wait_started(request_id)
        fake.release(request_id)
    await until(lambda: all(queue.get(r).status is JobStatus.COMPLETED for r in order))  # type: ignore[union-attr]
    assert fake.started == order
    await queue.stop()


async def test_restart_recovery_reruns_once_fails_twice_and_expires(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    clock = Clock()
    for job in [
        record("queued-low", Priority.LOW),
        record("queued"),
        record("ran-once"),
        record("ran-twice"),
        record("done"),
        record("old"),
    ]:
        await store.add(job)
    for request_id, attempts in (("ran-once", 1), ("ran-twice", MAX_ATTEMPTS)):
        for _ in range(attempts):
            await store.claim(request_id, started_at=1.0)
            if request_id == "ran-twice" and _ == 0:
                owner = (await store.get(request_id)).host_id  # type: ignore[union-attr]
                assert await store.requeue(request_id, attempts=1, owner=owner)
    ok = Outcome(200, "{}", {}, inference_time_s=1.0)
    await store.finish("done", ok, finished_at=clock.now, expires_at=clock.now + 10, logs=[])
    await store.finish("old", ok, finished_at=1.0, expires_at=clock.now - 1, logs=[])
    (tmp_path / "outputs" / "old").mkdir(parents=True)
    (tmp_path / "outputs" / "old" / "0.png").write_bytes(b"png")

    queue, fake = make_queue(store, endpoints, tmp_path, hold=False, clock=clock)
    await queue.start()
    await until(lambda: len(fake.finished) == 3)
    assert fake.started == ["queued", "ran-once", "queued-low"]  # by priority, then submission order
    broken = await store.get("ran-twice")
    assert broken is not None and broken.outcome is not None and broken.outcome.status_code == 503
    assert broken.outcome.error_type == "runner_disconnected" and "stopped twice" in (
        broken.outcome.error or ""
    )
    rerun = await store.get("ran-once")
    assert rerun is not None and rerun.attempts == 2 and rerun.outcome is not None and rerun.outcome.ok
    assert queue.get("old") is None and await store.get("old") is None
    assert not (tmp_path / "outputs" / "old").exists()
    assert queue.get("done") is not None
    await queue.stop()


async def test_retention_expiry_deletes_results_and_files(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    clock = Clock()
    queue, fake = make_queue(store, endpoints, tmp_path, hold=False, clock=clock)
    await queue.start()
    job = await queue.submit(endpoints[APP], {"prompt": "x"}, url_path=APP, base_url="http://h")
    await until(lambda: queue.get(job.request_id).status is JobStatus.COMPLETED)  # type: ignore[union-attr]
    files = tmp_path / "outputs" / job.request_id
    files.mkdir(parents=True)
    (files / "0.png").write_bytes(b"png")
    clock.now += 59.0
    await queue.sweep()
    assert (await queue.outcome(job.request_id)).ok and files.exists()
    clock.now += 2.0
    await queue.sweep()
    assert queue.get(job.request_id) is None and await store.get(job.request_id) is None
    assert not files.exists() and (tmp_path / "outputs").exists()
    await queue.stop()


async def test_sweep_deletes_sync_outputs_past_retention_but_not_a_known_jobs(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    queue, _ = make_queue(store, endpoints, tmp_path, hold=True)
    await queue.start()
    job = await queue.submit(endpoints[APP], {"prompt": "x"}, url_path=APP, base_url="http://h")
    outputs = OutputStore(tmp_path / "outputs")
    for request_id in ("old-sync-run", "new-sync-run", job.request_id):
        outputs.save(request_id, "0.png", b"png", "image/png")
    two_hours_ago = time.time() - 7200
    for request_id in ("old-sync-run", job.request_id):
        os.utime(tmp_path / "outputs" / request_id, (two_hours_ago, two_hours_ago))
    await queue.sweep()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted(
        ["new-sync-run", job.request_id]
    )
    await queue.stop()


async def test_shutdown_puts_a_running_job_back_without_counting_the_attempt(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    queue, fake = make_queue(store, endpoints, tmp_path, hold=True)
    await queue.start()
    job = await queue.submit(endpoints[APP], {"prompt": "x"}, url_path=APP, base_url="http://h")
    await fake.wait_started(job.request_id)
    await queue.stop()
    stored = await store.get(job.request_id)
    assert stored is not None and stored.status is JobStatus.IN_QUEUE and stored.attempts == 0
    assert fake.cancelled == [job.request_id]


async def test_job_handle_waits_for_the_outcome_and_aborts(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    queue, fake = make_queue(store, endpoints, tmp_path, hold=True)
    await queue.start()
    first = queue.job(
        (await queue.submit(endpoints[APP], {"prompt": "a"}, url_path=APP, base_url="http://h")).request_id
    )
    second = queue.job(
        (await queue.submit(endpoints[APP], {"prompt": "b"}, url_path=APP, base_url="http://h")).request_id
    )
    await fake.wait_started(first.request_id)
    assert (first.status(), second.status()) == (JobStatus.IN_PROGRESS, JobStatus.IN_QUEUE)
    with pytest.raises(TimeoutError):
        await first.result(timeout_s=0.05)
    assert await second.abort() == "CANCELLATION_REQUESTED"
    assert (await second.result(timeout_s=1)).status_code == 499
    fake.release(first.request_id)
    outcome = await first.result(timeout_s=5)
    assert outcome.ok and json.loads(outcome.body_json)["prompt"] == "a"
    assert await first.abort() == "ALREADY_COMPLETED" and queue.job("nope").status() is None
    await queue.stop()


async def test_a_job_waiting_for_a_busy_worker_times_out_at_its_start_deadline(
    store: JobStore, endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    queue, fake = make_queue(store, endpoints, tmp_path, hold=False)
    await queue.start()
    async with fake._worker:  # a sync run holds the worker: the job is taken from the queue and waits
        job = await queue.submit(
            endpoints[APP], {"prompt": "late"}, url_path=APP, base_url="http://h", timeout_s=0.5
        )  # fmt: skip
        outcome = await queue.job(job.request_id).result(timeout_s=5)
    assert outcome.status_code == 504 and outcome.error_type == "request_timeout" and fake.started == []
    await queue.stop()

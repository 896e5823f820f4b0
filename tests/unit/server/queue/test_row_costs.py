"""Each usage row is priced when it is written, for the worker that ran it, and keeps that cost: on a
real store (SQLite and PostgreSQL) migrated from the schema before row costs, two rows from workers at
different prices sum to what each cost, a price changed afterwards leaves them be (in /usage's sums
and in the monthly_usd budget's totals), and a row written before the migration is priced when read,
by its device kind at the reader's prices."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from server.api.usage import summarize
from server.queue import postgres_store, sqlite_store
from server.queue.accounts import Accounts
from server.queue.meter import Meter
from server.queue.prices import HourlyPrices
from server.queue.store import JobStore

H100, A10 = "NVIDIA H100 80GB HBM3", "NVIDIA A10"
WORKERS = {"on-h100": (0, "cuda", H100), "on-a10": (1, "cuda", A10)}
OLD_COLUMNS = (
    "finished_at, key_name, app_id, status, gpu_s, device, queue_s, megapixels, video_s, training_steps"
)


async def test_rows_keep_the_cost_of_their_worker_when_written(
    new_job_store: Callable[[], JobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as before:  # the store as the previous release left it, with one row
        before.setattr(sqlite_store, "SCHEMA_VERSION", sqlite_store.SCHEMA_VERSION - 1)
        before.setattr(postgres_store, "MIGRATIONS", postgres_store.MIGRATIONS[:-1])
        before.setattr(postgres_store, "SCHEMA_VERSION", postgres_store.SCHEMA_VERSION - 1)
        old = new_job_store()
        await old.open()
        accounts = Accounts(old)  # type: ignore[arg-type]
        sql = f"INSERT INTO {{t}}usage ({OLD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
        row = (time.time(), "team", "a/b", 200, 100.0, "cuda", 0, 0, 0, 0)  # 100 s of cuda, no cost
        await old.sql_write(accounts._sql(sql), [row])  # type: ignore[attr-defined]
        await old.close()

    store = new_job_store()
    await store.open()  # migrates: the old row stays, without a worker or a cost
    try:
        accounts = Accounts(store)  # type: ignore[arg-type]
        written = HourlyPrices.parse("cuda=3.6,H100=36")  # $0.001 and $0.01 a second
        host = Meter(accounts, prices=written, placed=WORKERS.get)
        host.record("team", "a/b", 200, run_s=100.0, request_id="on-h100")
        host.record("team", "a/b", 200, run_s=100.0, request_id="on-a10")
        assert host.month_usd("team") == pytest.approx(1.1)  # this host's rows, before a flush
        await host.flush()

        rows = await accounts.usage(0.0, time.time() + 1)
        assert [(r.worker, r.device_name, r.cost_usd) for r in rows] == [
            (None, "", None), (0, H100, pytest.approx(1.0)), (1, A10, pytest.approx(0.1)),
        ]  # fmt: skip
        (summed,) = summarize(rows, ("key",), written)
        assert summed["gpu_s"] == pytest.approx(300.0)
        assert summed["cost_usd"] == pytest.approx(1.0 + 0.1 + 0.1)  # the old row: 100 s of cuda at $3.6/h

        changed = HourlyPrices.parse("cuda=7.2,H100=0")  # the operator changes the prices afterwards
        (resummed,) = summarize(rows, ("key",), changed)
        assert resummed["cost_usd"] == pytest.approx(1.0 + 0.1 + 0.2)  # only the old row is re-priced
        restarted = Meter(accounts, prices=changed)
        await restarted.read_totals()  # what the monthly_usd budget reads
        assert restarted.month_usd("team") == pytest.approx(1.3)
        assert restarted.month_gpu_s("team") == pytest.approx(300.0)
    finally:
        await store.close()

"""What usage metering and per-key limits cost the facade per request, in process CPU (all threads:
the store's writer thread too), measured on the real parts without HTTP (the parts a request adds):

- a sync run's row (``Meter.record`` of a 4-image output: megapixels, the worker that ran it, its cost
  at a price list with worker, device-name and kind entries, the row, the month's totals),
- a queued request's row (``Meter.job_finished``: the outcome's JSON body parsed first),
- writing the rows to a real SQLite job store in the meter's batches (``Meter.flush``), per row,
- admitting a request of a key with every limit set (``Limiter.admit`` plus the queue's count).

    .venv/bin/python scripts/bench_metering.py [--requests 20000]

Prints each part per request and the total for a sync and a queued request against the target (0.2 ms).
Uses a throwaway data dir; no server, no ComfyUI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.queue.accounts import Accounts  # noqa: E402
from server.queue.limits import Limiter  # noqa: E402
from server.queue.meter import FLUSH_EVERY_S, Meter  # noqa: E402
from server.queue.prices import HourlyPrices  # noqa: E402
from server.queue.sqlite_store import SqliteJobStore  # noqa: E402
from server.queue.store import JobRecord, JobStatus, Outcome  # noqa: E402
from server.security.roles import Caller, Limits, Role  # noqa: E402

TARGET_MS = 0.2
PLACED = (0, "cuda", "NVIDIA A100-SXM4-80GB")  # every request's worker: priced by its device's name
IMAGE = {
    "url": "http://127.0.0.1:8000/files/x/0.png",
    "width": 1024,
    "height": 1024,
    "content_type": "image/png",
}
OUTPUT = {"images": [IMAGE] * 4, "seed": 7, "timings": {"inference": 3.2}, "prompt": "a lighthouse"}


def cpu_ms_per_call(calls: int, fn: Callable[[int], None]) -> float:
    started = time.process_time()
    for i in range(calls):
        fn(i)
    return (time.process_time() - started) * 1000 / calls


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = SqliteJobStore(Path(data_dir) / "jobs.sqlite3")
        await store.open()
        prices = HourlyPrices.parse("2.49,cuda=2.49,cpu=0,worker1=0.75,H100=2.49,A10=0.75")
        meter = Meter(Accounts(store), prices=prices, placed=lambda request_id: PLACED)
        keys = [f"key-{n}" for n in range(20)]
        sync_ms = cpu_ms_per_call(
            requests,
            lambda i: meter.record(
                keys[i % 20], "fal-ai/flux-2", 200, run_s=3.3, output=OUTPUT, request_id="r"
            ),
        )
        batch = max(1, int(requests / 50 / FLUSH_EVERY_S))  # rows per flush at 50 requests a second
        started = time.process_time()
        while meter._pending:
            rows, meter._pending = meter._pending[:batch], meter._pending[batch:]
            await meter.accounts.record_usage(rows)
        flush_ms = (time.process_time() - started) * 1000 / requests

        record = JobRecord(
            "r", "fal-ai/flux-2", "fal-ai/flux-2", "http://x", {"prompt": "a"}, user_id="key-1"
        )
        record.started_at, record.status = 1.0, JobStatus.COMPLETED
        outcome = Outcome(200, json.dumps(OUTPUT), inference_time_s=3.3)
        queued_ms = cpu_ms_per_call(requests, lambda i: meter.job_finished(record, outcome))
        meter._pending.clear()

        limiter = Limiter()
        callers = [Caller(k, Role.RUNNER, limits=Limits(10**6, 1000, 1e9, 1e9)) for k in keys]
        jobs = {str(n): record for n in range(1000)}  # a busy index: 1000 unexpired jobs
        now = time.time()

        def admit(i: int) -> None:
            user = keys[i % 20]
            in_flight = sum(
                1 for r in jobs.values() if r.user_id == user and r.status is not JobStatus.COMPLETED
            )
            limiter.admit(
                callers[i % 20], now=now + i * 1e-4, in_flight=in_flight,
                month_gpu_s=meter.month_gpu_s(user), month_usd=meter.month_usd(user),
            )  # fmt: skip

        admit_ms = cpu_ms_per_call(requests, admit)
        await store.close()
    print(f"sync row (Meter.record)       {sync_ms * 1000:8.1f} us/request")
    print(f"queued row (Meter.job_finished){queued_ms * 1000:7.1f} us/request")
    print(f"store write, batched          {flush_ms * 1000:8.1f} us/request")
    print(f"limits (admit, 1000-job index){admit_ms * 1000:8.1f} us/request")
    for kind, row_ms in (("sync", sync_ms), ("queued", queued_ms)):
        total = row_ms + flush_ms + admit_ms
        verdict = "under" if total < TARGET_MS else "OVER"
        print(
            f"total, {kind:6s} request        {total * 1000:8.1f} us  ({verdict} the {TARGET_MS} ms target)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args().requests))

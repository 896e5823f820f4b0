"""What a Prometheus scrape costs the facade: CPU per GET /metrics against GET /health (the baseline: the
same HTTP path doing nothing), in the same process and run, with the metrics filled as a busy server's
would be (every endpoint, 4 workers, thousands of finished requests, webhook results).

    .venv/bin/python scripts/bench_metrics.py [--scrapes 2000]

Prints process CPU per request for both and their difference (target: under 1 ms per scrape), and the
CPU of rendering the registry alone. The client runs in the same process, so both figures include its
share; the difference does not. Binds only to 127.0.0.1; uses a throwaway data dir; no ComfyUI.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from server.api.state import ENDPOINTS, METRICS  # noqa: E402
from server.app import create_app  # noqa: E402
from server.queue.store import JobRecord, Outcome  # noqa: E402
from server.settings import load_settings  # noqa: E402

TARGET_MS = 1.0


class _Worker:
    def __init__(self, worker_id: int) -> None:
        self.id, self.ready, self.gpu, self.restarts, self.busy = worker_id, True, None, worker_id, False

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "state": "ready"}


class _Supervisor:
    """Four ready workers, never started: the scrape reads their state only."""

    def __init__(self) -> None:
        self.workers = [_Worker(i) for i in range(4)]
        self.ready = True

    async def start(self, *, wait: bool = True) -> None:
        return None

    async def stop(self) -> None:
        return None


def fill(app: Any, finished: int) -> None:
    metrics = app[METRICS]
    endpoints = sorted(app[ENDPOINTS])
    now = time.time()
    for i in range(finished):
        app_id = endpoints[i % len(endpoints)]
        record = JobRecord(
            f"r{i}", app_id, app_id, "", {}, submitted_at=now - 3, started_at=now - 2, finished_at=now
        )
        metrics.job_finished(record, Outcome(200 if i % 10 else 500, "{}"))
        metrics.run_finished(app_id, 200, 0.5 + (i % 7))
        metrics.webhook_settled(("delivered", "retrying", "gave_up")[i % 3])


async def cpu_per_get(client: TestClient[Any, Any], path: str, count: int) -> float:
    for _ in range(50):  # warm up
        await client.get(path, headers={"Authorization": "Key bench"})
    start = time.process_time()
    for _ in range(count):
        response = await client.get(path, headers={"Authorization": "Key bench"})
        await response.read()
        assert response.status == 200, response.status
    return (time.process_time() - start) / count * 1000


async def main(scrapes: int) -> int:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings({}, data_dir=data_dir, api_keys="bench")
        app = create_app(settings, _Supervisor(), run_supervisor=False)  # type: ignore[arg-type]
        fill(app, 5000)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            size = len(await (await client.get("/metrics", headers={"Authorization": "Key bench"})).read())
            health: list[float] = []
            scrape: list[float] = []
            for _ in range(3):  # interleaved, so drift on a shared machine hits both
                health.append(await cpu_per_get(client, "/health", scrapes // 3))
                scrape.append(await cpu_per_get(client, "/metrics", scrapes // 3))
        render_start = time.process_time()
        for _ in range(200):
            app[METRICS].render()
        render_ms = (time.process_time() - render_start) / 200 * 1000
    health_ms, scrape_ms = min(health), min(scrape)
    print(f"{len(app[ENDPOINTS])} endpoints, 4 workers, 5000 finished requests; /metrics body {size} bytes")
    print(
        f"process CPU per request (best of 3 blocks of {scrapes // 3}): /health {health_ms:.3f} ms, "
        f"/metrics {scrape_ms:.3f} ms"
    )
    print(f"render alone: {render_ms:.3f} ms")
    cost = scrape_ms - health_ms
    verdict = "PASS" if cost < TARGET_MS else "FAIL"
    print(f"scrape cost over the baseline: {cost:.3f} ms (target < {TARGET_MS:g} ms): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=2000)
    raise SystemExit(asyncio.run(main(parser.parse_args().scrapes)))

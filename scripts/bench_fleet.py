"""Queue dispatch with the two job stores, in one run: SQLite (one host), PostgreSQL with one host, and
PostgreSQL with three hosts (a fleet), each `darkroom serve` with one CPU ComfyUI worker and the tiny
demo models, on loopback.

The graph does almost nothing (darkroom/demo-flux-2, one step at 16x16 pixels: about 0.1 s of
ComfyUI), so what is measured is the queue. For each setup:

- claim latency: --idle requests sent one at a time (the next once the last completed) over the
  WebSocket of each host in turn; the time from sending the submit to the request's "started" event
  on that socket (in a fleet that event is relayed from whichever host ran it). Median and p99.
- dispatch rate: --burst requests submitted at once, round-robin over the hosts; completed requests
  per second from the first submit to the last completion.
- status answers during the burst: each poller asks a random host for a random request's status;
  p50/p99, split by whether the answering host ran the request (known afterwards from the logs).

The three-host numbers share this machine's cores among three workers, three facades and PostgreSQL:
compare the setups' queue overheads (claim latency, status), not the rates, against a real fleet.

    .venv/bin/python scripts/bench_fleet.py [--idle 30] [--burst 150] [--pollers 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from drill_serve import KEY, ROOT, Server, postgres_database

APP = "darkroom/demo-flux-2"
BODY = {"prompt": "bench", "num_inference_steps": 1, "image_size": {"width": 16, "height": 16}}
HEADERS = {"Authorization": f"Key {KEY}"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2) if ordered else 0.0


class Bench:
    def __init__(self, servers: list[Server], http: aiohttp.ClientSession) -> None:
        self.servers, self.http = servers, http
        self.status_ms: list[tuple[str, int, float]] = []  # (request id, host index, ms)

    async def submit(self, host: int, seed: int) -> str:
        async with self.http.post(f"{self.servers[host].base}/queue/{APP}", json={**BODY, "seed": seed}) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["request_id"])

    async def one_at_a_time(self, count: int) -> list[float]:
        """Submit over each host's WebSocket in turn (so no event is missed) and time submit -> started."""
        latencies = []
        sockets = [await self.http.ws_connect(server.base + "/ws") for server in self.servers]
        for seed in range(count):
            ws = sockets[seed % len(sockets)]
            sent = time.perf_counter()
            await ws.send_json({"action": "submit", "app_id": APP, "input": {**BODY, "seed": seed}})
            started = None
            async for message in ws:
                kind = json.loads(message.data).get("type")
                if kind == "started" and started is None:
                    started = time.perf_counter()
                if kind in ("completed", "failed"):
                    break
            assert started is not None, "no started event"
            latencies.append((started - sent) * 1000)
        for ws in sockets:
            await ws.close()
        return latencies

    async def poll(self, ids: list[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            request_id, host = random.choice(ids), random.randrange(len(self.servers))
            url = f"{self.servers[host].base}/queue/{APP}/requests/{request_id}/status"
            started = time.perf_counter()
            async with self.http.get(url) as r:
                await r.read()
            self.status_ms.append((request_id, host, (time.perf_counter() - started) * 1000))
            await asyncio.sleep(0.02)

    async def burst(self, count: int, pollers: int) -> float:
        started = time.perf_counter()
        ids = await asyncio.gather(*(self.submit(i % len(self.servers), 10_000 + i) for i in range(count)))
        stop = asyncio.Event()
        polling = [asyncio.create_task(self.poll(ids, stop)) for _ in range(pollers)]
        for request_id in ids:
            while True:  # the result route: 200 once it completed
                async with self.http.get(f"{self.servers[0].base}/queue/{APP}/requests/{request_id}") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
        elapsed_s = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*polling)
        return count / elapsed_s


def runner_of(servers: list[Server], request_id: str) -> int | None:
    for index, server in enumerate(servers):
        if f"{request_id}: started on a worker of this host" in server.log_path.read_text(errors="replace"):
            return index
    return None


async def measure(servers: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(headers=HEADERS, connector=connector) as http:
        bench = Bench(servers, http)
        await bench.one_at_a_time(3)  # warm-up: models loaded on every worker
        idle = await bench.one_at_a_time(args.idle)
        rate = await bench.burst(args.burst, args.pollers)
    runners = {rid: runner_of(servers, rid) for rid, _, _ in bench.status_ms}
    own = [ms for rid, host, ms in bench.status_ms if runners[rid] == host]
    other = [ms for rid, host, ms in bench.status_ms if runners[rid] != host]
    return {
        "claim_ms_p50": percentile(idle, 0.5), "claim_ms_p99": percentile(idle, 0.99),
        "claim_ms_mean": round(statistics.fmean(idle), 2), "dispatch_per_s": round(rate, 1),
        "status_other_host_p50_ms": percentile(other, 0.5),
        "status_other_host_p99_ms": percentile(other, 0.99),
        "status_running_host_p50_ms": percentile(own, 0.5),
        "status_running_host_p99_ms": percentile(own, 0.99),
        "status_polls": len(bench.status_ms),
    }  # fmt: skip


def run_setup(name: str, hosts: int, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {"DARKROOM_PREVIEWS_PER_S": "0", "DARKROOM_DATABASE_URL": database_url}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        servers = [
            Server(f"bench-{name}-{i}", Path(tmp) / str(i), Path(args.models_dir), env) for i in range(hosts)
        ]
        try:
            for server in servers:
                server.start()
            return asyncio.run(measure(servers, args))
        finally:
            for server in servers:
                server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=30)
    parser.add_argument("--burst", type=int, default=150)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    results = {"sqlite, 1 host": run_setup("sqlite", 1, "", args)}
    with postgres_database(args.database_url) as url:
        results["postgresql, 1 host"] = run_setup("pg1", 1, url, args)
    with postgres_database(args.database_url) as url:  # a fresh database: no jobs left from the last
        results["postgresql, 3 hosts"] = run_setup("pg3", 3, url, args)
    columns = list(next(iter(results.values())))
    print(f"{'setup':<22}" + "".join(f"{c:>28}" for c in columns))
    for setup, figures in results.items():
        print(f"{setup:<22}" + "".join(f"{figures[c]:>28}" for c in columns))
    print("FIGURES " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

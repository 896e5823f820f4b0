"""Load drill against one host (`darkroom serve`, one CPU ComfyUI worker, the tiny demo models):
--submissions concurrent queue submissions while --subscribers WebSocket clients follow them and
--pollers clients poll their status.

Every submission is accepted or refused with 429 (the queue holds --queue-max); every accepted request
completes exactly once (one terminal event on its WebSocket, one run in the server's log, a result with
an image); the facade's peak RSS stays under --max-rss-mib. Prints `FIGURES {...}` (accepted, refused,
lost, run twice, status p50/p99 ms, submit p99 ms, peak RSS) and exits non-zero on any failure.

    .venv/bin/python scripts/drill_load.py [--submissions 1000] [--subscribers 100] [--pollers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from drill_serve import KEY, ROOT, Server, drilled

APP = "darkroom/demo-flux-2"
BODY = {"prompt": "load", "num_inference_steps": 1, "image_size": {"width": 16, "height": 16}}
HEADERS = {"Authorization": f"Key {KEY}"}


def rss_mib(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2) if ordered else 0.0


class Load:
    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base, self.http = base, http
        self.accepted: list[str] = []
        self.submit_codes: Counter[int] = Counter()
        self.submit_ms: list[float] = []
        self.status_ms: list[float] = []
        self.status_errors: Counter[int] = Counter()
        self.terminal: Counter[str] = Counter()  # request id -> terminal events seen on its socket
        self.done = asyncio.Event()

    async def submit(self, seed: int) -> None:
        started = time.perf_counter()
        async with self.http.post(f"{self.base}/queue/{APP}", json={**BODY, "seed": seed}) as response:
            self.submit_ms.append((time.perf_counter() - started) * 1000)
            self.submit_codes[response.status] += 1
            if response.status == 200:
                self.accepted.append((await response.json())["request_id"])

    async def subscriber(self, ws: aiohttp.ClientWebSocketResponse, request_ids: list[str]) -> None:
        await ws.send_json({"action": "subscribe", "request_ids": request_ids})
        waiting = set(request_ids)
        async for message in ws:
            event = json.loads(message.data)
            if event.get("type") in ("completed", "failed"):
                self.terminal[event["request_id"]] += 1
                waiting.discard(event["request_id"])
                if not waiting:
                    return

    async def poller(self) -> None:
        while not self.done.is_set():
            request_id = random.choice(self.accepted)
            started = time.perf_counter()
            async with self.http.get(f"{self.base}/queue/{APP}/requests/{request_id}/status") as response:
                await response.read()
                self.status_ms.append((time.perf_counter() - started) * 1000)
                if response.status not in (200, 202):
                    self.status_errors[response.status] += 1
            await asyncio.sleep(0.05)

    async def results(self) -> Counter[str]:
        outcome: Counter[str] = Counter()
        for request_id in self.accepted:
            async with self.http.get(f"{self.base}/queue/{APP}/requests/{request_id}") as response:
                body = await response.json()
                outcome["lost" if response.status == 404 else "ok" if body.get("images") else "failed"] += 1
        return outcome


async def drill(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    assert server.process is not None
    pid, figures = server.process.pid, dict[str, Any]()
    figures["rss_at_start_mib"] = round(rss_mib(pid, "VmRSS"), 1)
    connector = aiohttp.TCPConnector(limit=args.submissions + args.pollers + 10)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(headers=HEADERS, connector=connector, timeout=timeout) as http:
        load = Load(server.base, http)
        sockets = [await http.ws_connect(server.base + "/ws") for _ in range(args.subscribers)]
        started = time.monotonic()
        await asyncio.gather(*(load.submit(seed) for seed in range(args.submissions)))
        figures["submitted_in_s"] = round(time.monotonic() - started, 2)
        pollers = [asyncio.create_task(load.poller()) for _ in range(args.pollers)]
        shares = [load.accepted[i :: len(sockets)] for i in range(len(sockets))]
        async with asyncio.timeout(args.timeout_s):
            await asyncio.gather(
                *(load.subscriber(ws, share) for ws, share in zip(sockets, shares, strict=True) if share)
            )
        figures["all_done_in_s"] = round(time.monotonic() - started, 2)
        load.done.set()
        await asyncio.gather(*pollers)
        for ws in sockets:
            await ws.close()
        outcome = await load.results()
    log = server.log_path.read_text(errors="replace")
    accepted = set(load.accepted)
    runs = Counter(r for r in re.findall(rf"{APP} ([0-9a-f-]+): \d+ file\(s\) in", log) if r in accepted)
    figures.update(
        submissions=args.submissions, accepted=len(load.accepted), refused_429=load.submit_codes[429],
        other_submit_codes={str(k): v for k, v in load.submit_codes.items() if k not in (200, 429)},
        completed=outcome["ok"], failed=outcome["failed"], lost=outcome["lost"],
        run_twice=sum(1 for count in runs.values() if count > 1),
        not_run=len(load.accepted) - len(runs),
        terminal_events_twice=sum(1 for c in load.terminal.values() if c > 1),
        status_polls=len(load.status_ms), status_errors=dict(load.status_errors),
        status_p50_ms=percentile(load.status_ms, 0.5), status_p99_ms=percentile(load.status_ms, 0.99),
        submit_p50_ms=percentile(load.submit_ms, 0.5), submit_p99_ms=percentile(load.submit_ms, 0.99),
        peak_rss_mib=round(rss_mib(pid, "VmHWM"), 1), rss_at_end_mib=round(rss_mib(pid, "VmRSS"), 1),
        mean_status_ms=round(statistics.fmean(load.status_ms), 2) if load.status_ms else 0.0,
    )  # fmt: skip
    return figures


def failures(figures: dict[str, Any], args: argparse.Namespace) -> list[str]:
    wrong = []
    if figures["accepted"] + figures["refused_429"] != args.submissions or figures["other_submit_codes"]:
        wrong.append(f"submissions answered other than 200/429: {figures['other_submit_codes']}")
    if figures["completed"] != figures["accepted"]:
        wrong.append(
            f"{figures['failed']} failed and {figures['lost']} lost of {figures['accepted']} accepted"
        )
    if figures["run_twice"] or figures["not_run"] or figures["terminal_events_twice"]:
        wrong.append("a request ran twice, not at all, or ended twice on its socket")
    if figures["status_errors"]:
        wrong.append(f"status polls answered {figures['status_errors']}")
    if figures["peak_rss_mib"] > args.max_rss_mib:
        wrong.append(f"facade peak RSS {figures['peak_rss_mib']} MiB > {args.max_rss_mib}")
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--queue-max", type=int, default=800)
    parser.add_argument("--max-rss-mib", type=float, default=1024.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    env = {"DARKROOM_QUEUE_MAX_LENGTH": str(args.queue_max), "DARKROOM_PREVIEWS_PER_S": "0"}
    figures = drilled("load", Path(args.models_dir), env, lambda server: drill(server, args))
    figures["failures"] = wrong = failures(figures, args) + figures["failures"]
    print("FIGURES " + json.dumps(figures), flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault drill against the real stack (`darkroom serve`, one CPU ComfyUI worker, the tiny demo models):

1. kill -9: the facade is SIGKILLed with --requests queue requests submitted, some done, one running.
   After a restart every request completes exactly as submitted: none lost, none failed.
2. A hung worker: its process group is SIGSTOPped while it runs a queue request (alive, holding its
   socket, answering nothing). The supervisor's watchdog (DARKROOM_WORKER_HANG_TIMEOUT_S, 5 s here)
   kills and restarts it, and the request runs once more and completes. Figures: seconds from the stop
   to the worker's removal from service and to a new, ready worker; how the request ended.
3. Disk full: the outputs folder becomes a 4 KiB tmpfs (needs root, for mount). A run then fails with
   507 storage_full, nothing half-written is left, and the server keeps serving: /ready, a sync_mode run
   (no file written) and, once the disk has room again, a stored run.
4. SIGTERM drains: a running request finishes before the process exits (within DARKROOM_SHUTDOWN_GRACE_S)
   and is not run again; the queued ones run after the next start.

    .venv/bin/python scripts/drill_faults.py [--requests 100] [--models-dir data/models]

Prints one line of figures (`FIGURES {...}`) and exits non-zero on any failure. `tests/e2e/test_faults.py`
runs it in `make test` with fewer requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from drill_serve import KEY, ROOT, Server

APP = "darkroom/demo-flux-2"
FAST = {"prompt": "drill", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}}
SLOW = {
    "prompt": "slow",
    "num_inference_steps": 12,
    "num_images": 2,
    "image_size": {"width": 512, "height": 512},
}
HEADERS = {"Authorization": f"Key {KEY}"}
WAIT_S = 600.0
HANG_TIMEOUT_S = 5.0  # as tests/e2e/test_watchdog.py: short, with margin for a loaded 2-core machine


class Drill:
    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server, self.http = server, http
        self.failures: list[str] = []
        self.figures: dict[str, Any] = {}

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print("FAILED:", what, flush=True)

    async def submit(self, body: dict[str, Any]) -> str:
        async with self.http.post(f"{self.server.base}/queue/{APP}", json=body) as response:
            assert response.status == 200, await response.text()
            request_id: str = (await response.json())["request_id"]
            return request_id

    async def status(self, request_id: str) -> str:
        url = f"{self.server.base}/queue/{APP}/requests/{request_id}/status"
        async with self.http.get(url) as response:
            return (
                str((await response.json())["status"])
                if response.status in (200, 202)
                else str(response.status)
            )

    async def until(
        self, request_ids: list[str], wanted: str, *, at_least: int, timeout_s: float = WAIT_S
    ) -> None:
        async with asyncio.timeout(timeout_s):
            while sum([await self.status(r) == wanted for r in request_ids]) < at_least:
                await asyncio.sleep(0.2)

    async def outcomes(self, request_ids: list[str]) -> dict[str, int]:
        """How each request ended: counts of 'ok' (a result with images), 'failed', 'lost' (unknown)."""
        counts = {"ok": 0, "failed": 0, "lost": 0}
        for request_id in request_ids:
            async with self.http.get(f"{self.server.base}/queue/{APP}/requests/{request_id}") as response:
                body = await response.json()
                kind = "ok" if response.status == 200 and body.get("images") else "failed"
                counts["lost" if response.status == 404 else kind] += 1
        return counts

    async def run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.server.base}/run/{APP}", json=body) as response:
            return response.status, await response.json()

    async def worker(self) -> dict[str, Any]:
        """The one worker as /ready describes it (state, pid, restarts), and whether /ready is 200."""
        async with self.http.get(f"{self.server.base}/ready") as response:
            (worker,) = (await response.json())["workers"]
            return {**worker, "ready": response.status == 200}

    def restart(self) -> float:
        started = time.monotonic()
        self.server.start(append_log=True)
        return round(time.monotonic() - started, 2)


async def kill_nine(drill: Drill, count: int) -> None:
    submitted = [await drill.submit({**FAST, "seed": i}) for i in range(count)]
    await drill.until(submitted, "COMPLETED", at_least=min(3, count))
    await drill.until(submitted, "IN_PROGRESS", at_least=1)
    done_before = sum([await drill.status(r) == "COMPLETED" for r in submitted])
    drill.server.kill()
    drill.figures["kill9"] = {"requests": count, "completed_before_kill": done_before}
    drill.figures["kill9"]["restart_s"] = drill.restart()
    started = time.monotonic()
    await drill.until(submitted, "COMPLETED", at_least=count)
    outcome = await drill.outcomes(submitted)
    drill.figures["kill9"].update(outcome, after_restart_s=round(time.monotonic() - started, 2))
    drill.figures["kill9"]["run_again"] = drill.server.log_path.read_text(errors="replace").count(
        "was running when the server stopped: running it again"
    )
    drill.check(outcome["ok"] == count, f"kill -9: {outcome} of {count} requests")
    drill.check(drill.figures["kill9"]["run_again"] == 1, "kill -9: exactly the running request runs again")


async def hang(drill: Drill) -> None:
    request_id = await drill.submit({**SLOW, "seed": 7})
    await drill.until([request_id], "IN_PROGRESS", at_least=1)
    before = await drill.worker()
    os.killpg(before["pid"], signal.SIGSTOP)  # the worker runs in its own session: its group is its own
    stopped = time.monotonic()
    figures: dict[str, Any] = {"hang_timeout_s": HANG_TIMEOUT_S}
    drill.figures["hang"] = figures
    async with asyncio.timeout(HANG_TIMEOUT_S * 6 + 120):
        while (now := await drill.worker())["state"] == "ready" and now["pid"] == before["pid"]:
            await asyncio.sleep(0.1)
        figures["detected_s"] = round(time.monotonic() - stopped, 2)
        while not ((now := await drill.worker())["ready"] and now["pid"] != before["pid"]):
            await asyncio.sleep(0.1)
        figures["restarted_s"] = round(time.monotonic() - stopped, 2)
    await drill.until([request_id], "COMPLETED", at_least=1)
    figures["completed_s"] = round(time.monotonic() - stopped, 2)
    log = drill.server.log_path.read_text(errors="replace")
    figures.update(
        await drill.outcomes([request_id]),
        watchdog_killed=f"did not answer for {HANG_TIMEOUT_S:g} s; killing it" in log,
        run_again=log.count(f"{request_id} lost its worker"),
        restarts=now["restarts"] - before["restarts"],
    )  # fmt: skip
    drill.check(figures["watchdog_killed"], "hang: the watchdog did not log killing the stopped worker")
    drill.check(figures["restarts"] == 1, f"hang: {figures['restarts']} worker restarts, expected 1")
    drill.check(figures["run_again"] == 1, f"hang: the request ran again {figures['run_again']} times")
    drill.check(figures["ok"] == 1, f"hang: the request did not complete with images: {figures}")


async def disk_full(drill: Drill) -> None:
    outputs = drill.server.data_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(outputs)], capture_output=True
    )
    if mounted.returncode:
        drill.figures["disk_full"] = {"skipped": f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}"}
        return
    try:
        status, body = await drill.run({**FAST, "num_images": 2, "seed": 1})
        leftovers = [p.name for p in outputs.rglob("*") if p.is_file()]
        ready = await drill.http.get(drill.server.base + "/ready")
        inline, _ = await drill.run({**FAST, "seed": 2, "sync_mode": True})
    finally:
        subprocess.run(["umount", str(outputs)], check=True)
    stored, after = await drill.run({**FAST, "seed": 3})
    drill.figures["disk_full"] = {
        "status": status, "error_type": body.get("error_type"), "leftovers": len(leftovers),
        "ready": ready.status, "sync_mode_run": inline, "run_after": stored,
    }  # fmt: skip
    drill.check(status == 507 and body.get("error_type") == "storage_full", f"disk full: {status} {body}")
    drill.check("disk is full" in str(body.get("detail")), f"disk full: the message says so: {body}")
    drill.check(not leftovers, f"disk full: half-written files left: {leftovers}")
    drill.check(ready.status == 200 and inline == 200, "disk full: the server keeps serving")
    drill.check(stored == 200 and bool(after.get("images")), f"disk full: a run once there is room: {stored}")
    workers = drill.server.data_dir / "workers"
    inputs = [str(p) for p in workers.glob("*/input/**/*") if p.is_file()]
    kept = {
        w.name: [p for p in w.glob("output/**/*") if p.is_file()] for w in workers.iterdir() if w.is_dir()
    }
    drill.figures["disk_full"]["worker_files_kept"] = len(inputs) + sum(map(len, kept.values()))
    drill.check(not inputs, f"the worker keeps copies of runs' inputs: {inputs[:5]}")
    most = max(map(len, kept.values()), default=0)
    drill.check(
        most <= len(after.get("images", ())), f"a worker keeps more than its last run's outputs: {outputs}"
    )


async def drain(drill: Drill) -> None:
    slow = await drill.submit(SLOW)
    queued = [await drill.submit({**FAST, "seed": 100 + i}) for i in range(3)]
    await drill.until([slow], "IN_PROGRESS", at_least=1)
    before = drill.server.log_path.read_text(errors="replace").count("running it again")
    started = time.monotonic()
    code = drill.server.stop()
    exit_s = round(time.monotonic() - started, 2)
    drill.restart()
    await drill.until([slow, *queued], "COMPLETED", at_least=4)
    outcome = await drill.outcomes([slow, *queued])
    rerun = drill.server.log_path.read_text(errors="replace").count("running it again") - before
    drill.figures["sigterm"] = {"exit_code": code, "exit_s": exit_s, "run_again": rerun, **outcome}
    drill.check(code == 0, f"SIGTERM: exit code {code}")
    drill.check(rerun == 0, "SIGTERM: the running request finished before the exit (not run again)")
    drill.check(outcome["ok"] == 4, f"SIGTERM: {outcome} of 4 requests")


async def main_async(args: argparse.Namespace, data_dir: Path) -> Drill:
    env = {"DARKROOM_DISK_MIN_FREE_BYTES": "0", "DARKROOM_WORKER_HANG_TIMEOUT_S": f"{HANG_TIMEOUT_S:g}"}
    server = Server("faults", data_dir, Path(args.models_dir), env)
    server.start()
    try:
        async with aiohttp.ClientSession(headers=HEADERS, timeout=aiohttp.ClientTimeout(total=120)) as http:
            drill = Drill(server, http)
            phases: list[Callable[[], Awaitable[None]]] = [
                lambda: kill_nine(drill, args.requests), lambda: hang(drill), lambda: disk_full(drill),
                lambda: drain(drill),
            ]  # fmt: skip
            for phase in phases:
                try:
                    await phase()
                except (AssertionError, TimeoutError, aiohttp.ClientError) as e:
                    drill.check(False, f"{type(e).__name__}: {e}")
            drill.figures["key_in_log"] = server.log_has(KEY)
            drill.check(not drill.figures["key_in_log"], "the API key is in the server's log")
            return drill
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drill-faults-") as tmp:
        drill = asyncio.run(main_async(args, Path(tmp)))
    drill.figures.update(seconds=round(time.monotonic() - started, 1), failures=drill.failures)
    print("FIGURES " + json.dumps(drill.figures), flush=True)
    return 1 if drill.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

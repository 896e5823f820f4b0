"""Fleet drill: three `darkroom serve` hosts (one CPU ComfyUI worker each, the tiny demo models) on one
PostgreSQL job store, a short host lease, and a webhook receiver, all on loopback.

The hosts have different model files: A has every demo model, B lacks Wan 2.2 5B's, C also lacks
FLUX.1 [dev]'s, so darkroom/demo-flux-2 runs anywhere, demo-flux-dev on A or B, demo-wan-2.2-5b-t2v
on A alone. Phases, each a figure and a failure if it goes wrong:

1. spread: --requests demo-flux-2 requests submitted round-robin to the hosts, each with a webhook:
   every one completes exactly once (one run in all the hosts' logs), every host runs some, each
   status and result is read from a host other than the one that ran it and matches.
2. progress: a slow request followed over /ws on every host: the hosts that do not run it relay its
   progress events too.
3. routing and cancel: a Wan request submitted to C runs on A (the only host with its files); a slow
   FLUX.1 request, cancelled through C (which cannot run it) while it runs on A or B, ends cancelled.
4. host death: a slow FLUX.1 request; the host running it (A or B) is killed -9 while it runs; the
   request completes on the other within the lease bound. Webhook deliveries left pending (the
   receiver refuses the first attempts) are delivered once each by the hosts still alive.

Prints `FIGURES {...}` and exits non-zero on any failure.

    .venv/bin/python scripts/drill_fleet.py [--requests 200] [--database-url postgresql://...]

Without --database-url it starts a throwaway PostgreSQL cluster (Debian's postgresql package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from drill_serve import KEY, ROOT, Server, postgres_database

from server.engine.worker import free_port

HEADERS = {"Authorization": f"Key {KEY}"}
FLUX2, FLUX1, WAN = "darkroom/demo-flux-2", "darkroom/demo-flux-dev", "darkroom/demo-wan-2.2-5b-t2v"
QUICK = {"prompt": "fleet", "num_inference_steps": 1, "image_size": {"width": 16, "height": 16}}
SLOW = {
    "prompt": "slow",
    "num_inference_steps": 12,
    "image_size": {"width": 512, "height": 512},
    "num_images": 2,
}
WAN_BODY = {"prompt": "wan", "num_inference_steps": 2, "resolution": "64p", "num_frames": 17}
LACKS = {"B": ("wan22-ti2v-5b-fp8_scaled",), "C": ("wan22-ti2v-5b-fp8_scaled", "flux1-fp8_scaled")}


def models_for(host: str, models_dir: Path, root: Path) -> Path:
    """The tiny models folder as host ``host`` sees it: links to every file but the ones it lacks."""
    if host not in LACKS:
        return models_dir
    mine = root / f"models-{host}"
    for path in models_dir.rglob("*.safetensors"):
        if not any(path.name.startswith(lacked) for lacked in LACKS[host]):
            link = mine / path.relative_to(models_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return mine


class Receiver:
    """Webhook target: counts accepted deliveries per request; refuses (500) the first attempts of
    the requests in ``refuse_first``."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.refuse_first: dict[str, int] = {}
        self.keys_ok = True

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        request_id = body["request_id"]
        self.attempts[request_id] += 1
        self.keys_ok &= request.headers.get("Idempotency-Key") == request_id
        if self.attempts[request_id] <= self.refuse_first.get(request_id, 0):
            return web.Response(status=500)
        self.accepted[request_id] += 1
        return web.Response(status=200)


class Fleet:
    def __init__(self, servers: dict[str, Server], http: aiohttp.ClientSession, hook: str) -> None:
        self.servers, self.http, self.hook = servers, http, hook

    def alive(self) -> list[str]:
        return [n for n, s in self.servers.items() if s.process is not None and s.process.poll() is None]

    async def submit(self, host: str, app: str, body: dict[str, Any], *, webhook: bool = False) -> str:
        query = f"?fal_webhook={self.hook}" if webhook else ""
        async with self.http.post(f"{self.servers[host].base}/queue/{app}{query}", json=body) as r:
            assert r.status == 200, (r.status, await r.text())
            return str((await r.json())["request_id"])

    async def status(self, host: str, app: str, request_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.servers[host].base}/queue/{app}/requests/{request_id}/status") as r:
            assert r.status in (200, 202), (r.status, await r.text())
            return dict(await r.json())

    async def result(self, host: str, app: str, request_id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.servers[host].base}/queue/{app}/requests/{request_id}") as r:
            return r.status, dict(await r.json())

    async def until(self, app: str, request_id: str, status: str, *, timeout_s: float) -> float:
        """Poll (any live host, in turn) until the request has ``status``; the seconds it took."""
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            for turn in range(10**9):
                hosts = self.alive()
                if (await self.status(hosts[turn % len(hosts)], app, request_id))["status"] == status:
                    return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    def runners(self, request_id: str) -> list[str]:
        """The hosts whose log says the request started on one of their workers (once per run)."""
        found = []
        for name, server in self.servers.items():
            found += [name] * server.log_path.read_text(errors="replace").count(
                f"{request_id}: started on a worker of this host"
            )
        return found

    async def started_on(self, request_id: str, *, timeout_s: float = 60) -> str:
        """Wait until one host's log says the request started on its worker (a claim shows the
        request IN_PROGRESS before the worker's first event); that host."""
        async with asyncio.timeout(timeout_s):
            while not (hosts := self.runners(request_id)):
                await asyncio.sleep(0.1)
        (host,) = hosts
        return host

    def ran(self, request_id: str) -> list[str]:
        """The hosts whose log says the request's run finished (once per run)."""
        pattern = re.compile(rf"{re.escape(request_id)}: \d+ file\(s\) in")
        return [
            n
            for n, s in self.servers.items()
            for _ in pattern.findall(s.log_path.read_text(errors="replace"))
        ]


async def spread(fleet: Fleet, receiver: Receiver, requests: int) -> dict[str, Any]:
    names = list(fleet.servers)
    started = time.monotonic()
    ids = await asyncio.gather(
        *(fleet.submit(names[i % 3], FLUX2, {**QUICK, "seed": i}, webhook=True) for i in range(requests))
    )
    await asyncio.gather(*(fleet.until(FLUX2, rid, "COMPLETED", timeout_s=600) for rid in ids))
    figures: dict[str, Any] = {"spread_s": round(time.monotonic() - started, 1)}
    runs = {rid: fleet.ran(rid) for rid in ids}
    per_host = Counter(host for hosts in runs.values() for host in hosts)
    elsewhere_ok = 0
    for rid, hosts in runs.items():
        other = next(n for n in names if n not in hosts)
        code, body = await fleet.result(other, FLUX2, rid)
        elsewhere_ok += code == 200 and len(body.get("images", [])) == 1
    async with asyncio.timeout(60):
        while sum(receiver.accepted[rid] for rid in ids) < requests:
            await asyncio.sleep(0.2)
    figures.update(
        spread_requests=requests, spread_runs_per_host=dict(per_host),
        spread_run_once=sum(1 for hosts in runs.values() if len(hosts) == 1),
        spread_results_from_another_host=elsewhere_ok,
        spread_webhooks_once=sum(1 for rid in ids if receiver.accepted[rid] == 1),
    )  # fmt: skip
    return figures


async def follow(fleet: Fleet, host: str, request_id: str, seen: Counter[str]) -> None:
    async with fleet.http.ws_connect(fleet.servers[host].base + "/ws") as ws:
        await ws.send_json({"action": "subscribe", "request_ids": [request_id]})
        async for message in ws:
            event = json.loads(message.data)
            seen[f"{host}:{event.get('type')}"] += 1
            if event.get("type") in ("completed", "failed"):
                return


async def progress(fleet: Fleet) -> dict[str, Any]:
    request_id = await fleet.submit("C", FLUX1, {**SLOW, "seed": 1})
    seen: Counter[str] = Counter()
    async with asyncio.timeout(120):
        await asyncio.gather(*(follow(fleet, host, request_id, seen) for host in fleet.servers))
    (runner,) = fleet.ran(request_id)
    others = [h for h in fleet.servers if h != runner]
    return {
        "progress_runner": runner,
        "progress_events_on_other_hosts": {h: seen[f"{h}:progress"] for h in others},
        "progress_completed_everywhere": all(seen[f"{h}:completed"] == 1 for h in fleet.servers),
    }


async def routing_and_cancel(fleet: Fleet) -> dict[str, Any]:
    routed = await fleet.submit("C", WAN, {**WAN_BODY, "seed": 2})
    await fleet.until(WAN, routed, "COMPLETED", timeout_s=120)
    doomed = await fleet.submit("A", FLUX1, {**SLOW, "seed": 3})
    await fleet.until(FLUX1, doomed, "IN_PROGRESS", timeout_s=120)
    await fleet.started_on(doomed)
    async with fleet.http.put(f"{fleet.servers['C'].base}/queue/{FLUX1}/requests/{doomed}/cancel") as r:
        cancel_status = r.status
    await fleet.until(FLUX1, doomed, "COMPLETED", timeout_s=60)
    code, _ = await fleet.result("B", FLUX1, doomed)
    return {
        "routed_ran_on": fleet.ran(routed), "cancel_answer": cancel_status, "cancelled_result": code,
        "cancelled_started_on": fleet.runners(doomed), "cancelled_finished_runs": len(fleet.ran(doomed)),
    }  # fmt: skip


async def host_death(fleet: Fleet, receiver: Receiver, lease_s: float) -> dict[str, Any]:
    pending = [await fleet.submit("A", FLUX2, {**QUICK, "seed": 100 + i}, webhook=True) for i in range(6)]
    for rid in pending:
        receiver.refuse_first[rid] = 2  # its delivery stays pending over the death, with back-off
    victim_request = await fleet.submit("C", FLUX1, {**SLOW, "seed": 7})
    await fleet.until(FLUX1, victim_request, "IN_PROGRESS", timeout_s=120)
    victim = await fleet.started_on(victim_request)
    fleet.servers[victim].kill()
    killed_at = time.monotonic()
    await fleet.until(FLUX1, victim_request, "COMPLETED", timeout_s=lease_s + 120)
    done_after_s = time.monotonic() - killed_at
    code, body = await fleet.result("C", FLUX1, victim_request)
    async with asyncio.timeout(120):
        while sum(1 for rid in pending if receiver.accepted[rid]) < len(pending):
            await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # time for a duplicate to show, if there were one
    return {
        "killed": victim, "rerun_on": [h for h in fleet.runners(victim_request) if h != victim],
        "rerun_done_after_kill_s": round(done_after_s, 1), "rerun_result": code,
        "rerun_images": len(body.get("images", [])),
        "death_webhooks_once": sum(1 for rid in pending if receiver.accepted[rid] == 1),
        "death_webhooks": len(pending),
    }  # fmt: skip


def failures(f: dict[str, Any], args: argparse.Namespace) -> list[str]:
    wrong = []
    n = args.requests
    if f["spread_run_once"] != n or f["spread_results_from_another_host"] != n:
        wrong.append(f"spread: {f['spread_run_once']}/{n} ran once, {f['spread_results_from_another_host']} "
                     "results read from another host")  # fmt: skip
    if len(f["spread_runs_per_host"]) != 3:
        wrong.append(f"spread: not every host ran requests: {f['spread_runs_per_host']}")
    if f["spread_webhooks_once"] != n or not f["webhook_idempotency_keys"]:
        wrong.append(f"webhooks: {f['spread_webhooks_once']}/{n} delivered exactly once")
    if not all(f["progress_events_on_other_hosts"].values()) or not f["progress_completed_everywhere"]:
        wrong.append(f"progress not relayed: {f['progress_events_on_other_hosts']}")
    if f["routed_ran_on"] != ["A"] or len(f["cancelled_started_on"]) != 1 or f["cancelled_result"] != 499:
        wrong.append(
            f"routing/cancel: {f['routed_ran_on']}, {f['cancelled_started_on']}, {f['cancelled_result']}"
        )
    if f["cancel_answer"] != 202 or f["cancelled_finished_runs"]:
        wrong.append(f"cancel across hosts answered {f['cancel_answer']} and the run finished anyway")
    if len(f["rerun_on"]) != 1 or f["rerun_result"] != 200 or f["rerun_images"] != 2:
        wrong.append(f"host death: re-run on {f['rerun_on']}, result {f['rerun_result']}")
    if f["rerun_done_after_kill_s"] > args.lease_s + 60:
        wrong.append(f"host death: the re-run took {f['rerun_done_after_kill_s']} s")
    if f["death_webhooks_once"] != f["death_webhooks"]:
        wrong.append(f"webhooks across a death: {f['death_webhooks_once']}/{f['death_webhooks']} once")
    return wrong


async def drill(
    servers: dict[str, Server], receiver: Receiver, hook: str, args: argparse.Namespace
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(headers=HEADERS, timeout=timeout, connector=connector) as http:
        fleet = Fleet(servers, http, hook)
        figures = await spread(fleet, receiver, args.requests)
        figures |= await progress(fleet)
        figures |= await routing_and_cancel(fleet)
        figures |= await host_death(fleet, receiver, args.lease_s)
    figures["webhook_idempotency_keys"] = receiver.keys_ok
    return figures


async def run(args: argparse.Namespace, database_url: str, root: Path) -> dict[str, Any]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {
        "DARKROOM_DATABASE_URL": database_url, "DARKROOM_HOST_LEASE_S": str(args.lease_s),
        "DARKROOM_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "DARKROOM_WEBHOOK_BACKOFF_BASE_S": "1",
        "DARKROOM_WEBHOOK_TIMEOUT_S": "3", "DARKROOM_PREVIEWS_PER_S": "1",
    }  # fmt: skip
    models = Path(args.models_dir)
    servers = {
        name: Server(f"fleet-{name}", root / name, models_for(name, models, root), env) for name in "ABC"
    }
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers.values()))
        figures = await drill(servers, receiver, f"http://127.0.0.1:{port}/hook", args)
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers.values()))
        await runner.cleanup()
    tracebacks = {n: s.facade_tracebacks() for n, s in servers.items() if s.facade_tracebacks()}
    figures.update(key_in_log=any(s.log_has(KEY) for s in servers.values()), facade_tracebacks=tracebacks)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--database-url")
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    with (
        postgres_database(args.database_url) as url,
        tempfile.TemporaryDirectory(prefix="drill-fleet-") as tmp,
    ):
        figures = asyncio.run(run(args, url, Path(tmp)))
    wrong = failures(figures, args)
    if figures["key_in_log"] or figures["facade_tracebacks"]:
        wrong.append(f"key in a log or tracebacks: {figures['facade_tracebacks']}")
    figures["failures"] = wrong
    print("FIGURES " + json.dumps(figures), flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

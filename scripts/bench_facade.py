"""Facade overhead: darkroom's sync route (POST /run/darkroom/demo-flux-2) against the same graph posted
straight to the ComfyUI worker that darkroom itself started, in the same run.

    .venv/bin/python scripts/bench_facade.py [--requests 50] [--warmup 3]

The direct client does what the facade does for one request: open the worker's WebSocket
(/ws?clientId=...), POST /prompt with that client_id, wait for the prompt's execution_success and
fetch the output through /view. Requests run one at a time, in blocks of four, F D D F, with
seeds (s, s+1) as F(s) D(s+1) D(s) F(s+1): both sides get the same seed sequence, the order
balances drift and position, and no prompt follows an identical one (ComfyUI's classic cache keeps
only the previous prompt's results, so the sampler always runs).

Prints median and p99 per side and the difference, for the end-to-end latency and split by
ComfyUI's own execution_start / execution_success timestamps (from /history, fetched after each
request, untimed). On a shared CPU the graph's execution varies by hundreds of ms, far more than
the overhead, so PASS/FAIL (target: < 5 ms added at the median) is judged on latency minus
ComfyUI's execution time, which the facade can add to and the graph's run time does not blur; the
end-to-end difference is printed with a bootstrap interval showing how much it can resolve.
Needs `make setup` (ComfyUI installed, tiny models built); binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_cold_start import APP_ID, ROOT, free_port, stop, wait_for

sys.path.insert(0, str(ROOT))

from server.engine.install import ensure_comfyui  # noqa: E402
from server.engine.models import load_manifest  # noqa: E402
from server.generation.live import SAMPLER_CLASS_TYPES  # noqa: E402
from server.settings import load_settings  # noqa: E402
from server.workflows.mapping import Endpoint, load_endpoints  # noqa: E402

TARGET_MEDIAN_MS = 5.0
PROMPT_TEXT = "a lighthouse"
SEED_BASE = 1_000


@dataclass
class Darkroom:
    """A running `darkroom serve`: its URL, process, and the worker it started (from /ready)."""

    base_url: str
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log_path: Path

    @property
    def worker(self) -> dict[str, Any]:
        workers: list[dict[str, Any]] = self.ready["workers"]
        return workers[0]

    @property
    def worker_url(self) -> str:
        return str(self.worker["base_url"]).rstrip("/")


@contextlib.contextmanager
def darkroom_serve(
    extra_env: dict[str, str] | None = None, timeout_s: float = 300.0, *, cpu: bool = True
) -> Iterator[Darkroom]:
    """`darkroom serve --workers 1 --cpu` (on the GPU without ``cpu``) on free loopback ports with a
    throwaway data dir (job store, outputs, worker state), the repo's models and the installed ComfyUI;
    stopped on exit."""
    settings = load_settings(data_dir=os.environ.get("DARKROOM_DATA_DIR") or str(ROOT / "data"))
    comfyui_dir = ensure_comfyui(settings, install_requirements=False)
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        port = free_port()
        env = dict(
            os.environ,
            DARKROOM_WORKER_BASE_PORT=str(free_port()),
            DARKROOM_MODELS_DIR=str(settings.models_path),
            DARKROOM_COMFYUI_DIR=str(comfyui_dir),
            **(extra_env or {}),
        )
        command = [str(ROOT / ".venv/bin/darkroom"), "serve", "--port", str(port), "--workers", "1"]
        command += ["--cpu", "--data-dir", tmp] if cpu else ["--data-dir", tmp]
        log_path = Path(tmp) / "serve.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            try:
                wait_for(f"{base_url}/ready", timeout_s)
            except TimeoutError:
                sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
                raise
            with urllib.request.urlopen(f"{base_url}/ready", timeout=10) as response:
                ready = json.loads(response.read())
            yield Darkroom(base_url, process, ready, log_path)
        finally:
            stop(process)


def body_for(seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT_TEXT, "seed": seed}


@dataclass
class Sample:
    """One request as the client saw it, with ComfyUI's own account of the prompt (from /history)."""

    total_s: float
    execution_s: float  # execution_start -> execution_success, ComfyUI's timestamps (ms)
    before_s: float  # request sent -> execution_start
    sampler_cached: bool
    parts: dict[str, float]  # client-side phases

    @property
    def outside_s(self) -> float:
        """Everything but ComfyUI executing the graph: the part the facade can add to."""
        return self.total_s - self.execution_s

    @property
    def after_s(self) -> float:
        """execution_success -> the answer in hand."""
        return self.outside_s - self.before_s


async def comfy_account(
    session: aiohttp.ClientSession, worker_url: str, prompt_id: str, samplers: set[str]
) -> tuple[float, float, bool]:
    """(execution_start, execution_success as Unix times, sampler taken from cache) from the
    worker's history of prompt_id."""
    for _ in range(200):  # the worker records history just after it announces execution_success
        async with session.get(f"{worker_url}/history/{prompt_id}") as response:
            entry = (await response.json()).get(prompt_id)
        if entry is not None:
            break
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError(f"ComfyUI has no history for {prompt_id}")
    stamps: dict[str, float] = {}
    cached: set[str] = set()
    for kind, data in entry["status"]["messages"]:
        stamps[kind] = data.get("timestamp", 0) / 1000.0
        if kind == "execution_cached":
            cached.update(data.get("nodes", []))
    return stamps["execution_start"], stamps["execution_success"], bool(samplers & cached)


async def via_facade(
    session: aiohttp.ClientSession, darkroom: Darkroom, seed: int, samplers: set[str]
) -> Sample:
    """One sync run through darkroom; the prompt id ComfyUI saw is the x-fal-request-id."""
    sent, started = time.time(), time.perf_counter()
    async with session.post(f"{darkroom.base_url}/run/{APP_ID}", json=body_for(seed)) as response:
        payload = await response.json()
        if response.status != 200:
            raise RuntimeError(f"facade answered {response.status}: {payload}")
        request_id = response.headers["x-fal-request-id"]
    total = time.perf_counter() - started
    if not payload.get("images"):
        raise RuntimeError(f"facade answered no images: {payload}")
    start, success, cached = await comfy_account(session, darkroom.worker_url, request_id, samplers)
    inference = float(payload["timings"]["inference"])
    parts = {"outside timings.inference": total - inference, "timings.inference": inference}
    return Sample(total, success - start, start - sent, cached, parts)


async def via_comfyui(
    session: aiohttp.ClientSession, worker_url: str, prompt: dict[str, Any], output_node: str,
    samplers: set[str],
) -> Sample:  # fmt: skip
    """One prompt straight to the worker: WebSocket, POST /prompt, wait for success, GET /view."""
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    sent, started = time.time(), time.perf_counter()
    saved: list[dict[str, Any]] = []
    async with session.ws_connect(f"{worker_url}/ws", params={"clientId": client_id}) as ws:
        connected = time.perf_counter()
        payload = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id}
        async with session.post(f"{worker_url}/prompt", json=payload) as response:
            if response.status != 200:
                raise RuntimeError(f"ComfyUI answered {response.status}: {await response.text()}")
            await response.read()
        submitted = time.perf_counter()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                continue  # previews
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"ComfyUI WebSocket closed ({msg.type.name})")
            message = json.loads(msg.data)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            if kind == "executed" and data.get("node") == output_node:
                saved += data["output"].get("images", [])
            elif kind == "execution_success":
                break
            elif kind in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"ComfyUI: {kind}: {data}")
    executed = time.perf_counter()
    if not saved:
        raise RuntimeError("ComfyUI produced no images")
    for entry in saved:
        params = {"filename": entry["filename"], "subfolder": entry.get("subfolder", "")}
        params["type"] = entry.get("type", "output")
        async with session.get(f"{worker_url}/view", params=params) as response:
            if response.status != 200:
                raise RuntimeError(f"/view answered {response.status}")
            await response.read()
    total = time.perf_counter() - started
    start, success, cached = await comfy_account(session, worker_url, prompt_id, samplers)
    parts = {
        "WS connect": connected - started,
        "POST /prompt": submitted - connected,
        "wait for success": executed - submitted,
        "GET /view": total - (executed - started),
    }
    return Sample(total, success - start, start - sent, cached, parts)


def schedule(requests: int) -> list[tuple[str, int]]:
    """(side, seed) in blocks F(s) D(s+1) D(s) F(s+1): same seeds per side, no seed twice in a row."""
    order: list[tuple[str, int]] = []
    for block in range(-(-requests // 2)):
        s = SEED_BASE + 2 * block
        order += [("facade", s), ("comfyui", s + 1), ("comfyui", s), ("facade", s + 1)]
    return order


async def bench(
    darkroom: Darkroom, endpoint: Endpoint, requests: int, warmup: int
) -> tuple[list[Sample], list[Sample]]:
    """(facade samples, direct samples), requests of each, serial and interleaved."""
    manifest = load_manifest()
    samplers = {n for n, node in endpoint.workflow.items() if node.get("class_type") in SAMPLER_CLASS_TYPES}

    def direct(s: aiohttp.ClientSession, seed: int) -> Awaitable[Sample]:
        prompt, _ = endpoint.build_prompt(endpoint.validate(body_for(seed)), manifest)
        return via_comfyui(s, darkroom.worker_url, prompt, endpoint.output.node, samplers)

    facade: list[Sample] = []
    comfy: list[Sample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        for i in range(warmup):  # model loads and first-call costs, on both paths; not counted
            await via_facade(s, darkroom, 10 * i + 1, samplers)
            await direct(s, 10 * i + 2)
        for side, seed in schedule(requests):
            if side == "facade" and len(facade) < requests:
                facade.append(await via_facade(s, darkroom, seed, samplers))
            elif side == "comfyui" and len(comfy) < requests:
                comfy.append(await direct(s, seed))
    return facade, comfy


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); the p99 of 50 samples is their maximum."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(len(ordered) * q / 100)))
    return ordered[rank - 1]


def median_diff_ci(a: list[float], b: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(a) - median(b): how much the raw totals can tell apart."""
    rng = random.Random(0)
    diffs = sorted(
        statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
        for _ in range(rounds)
    )
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]


def report(facade: list[Sample], comfy: list[Sample]) -> None:
    ms = 1000.0

    def row(label: str, f: Iterable[float], d: Iterable[float]) -> tuple[float, float]:
        f, d = list(f), list(d)
        med = (statistics.median(f) - statistics.median(d)) * ms
        p99 = (percentile(f, 99) - percentile(d, 99)) * ms
        print(
            f"{label:38}{statistics.median(d) * ms:9.1f}{percentile(d, 99) * ms:9.1f}"
            f"{statistics.median(f) * ms:9.1f}{percentile(f, 99) * ms:9.1f}{med:+9.1f}{p99:+9.1f}"
        )
        return med, p99

    n = len(facade)
    print(f"\n{n} requests per side, one at a time, interleaved F D D F; ms")
    print(f"{'':38}{'direct ComfyUI':>18}{'darkroom /run':>18}{'difference':>18}")
    print(f"{'':38}" + f"{'median':>9}{'p99':>9}" * 3)
    row("end-to-end latency", (x.total_s for x in facade), (x.total_s for x in comfy))
    row(
        "  ComfyUI executing (its timestamps)",
        (x.execution_s for x in facade),
        (x.execution_s for x in comfy),
    )
    added, _ = row(
        "  all the rest (latency - executing)", (x.outside_s for x in facade), (x.outside_s for x in comfy)
    )
    row("    sent -> execution_start", (x.before_s for x in facade), (x.before_s for x in comfy))
    row("    execution_success -> answer", (x.after_s for x in facade), (x.after_s for x in comfy))
    low, high = median_diff_ci([x.total_s for x in facade], [x.total_s for x in comfy])
    pairs = [f.outside_s - d.outside_s for f, d in zip(facade, comfy, strict=True)]
    print(f"end-to-end median difference, 95% bootstrap interval: [{low * ms:+.1f}, {high * ms:+.1f}] ms")
    print(f"median of paired differences of 'all the rest': {statistics.median(pairs) * ms:+.1f} ms")

    print("\nwhere the time goes (medians, ms)")
    for label, samples in (("direct", comfy), ("darkroom", facade)):
        parts = ", ".join(
            f"{k} {statistics.median(x.parts[k] for x in samples) * ms:.1f}" for k in samples[0].parts
        )
        print(f"  {label}: {parts}")
    f_inside = [x.parts["timings.inference"] - x.execution_s for x in facade]
    d_inside = [x.outside_s for x in comfy]
    print(
        f"  WS connect .. output in hand, less executing: darkroom {statistics.median(f_inside) * ms:.1f}"
        f" (incl. storing the file), direct {statistics.median(d_inside) * ms:.1f}"
    )
    cached = sum(x.sampler_cached for x in facade + comfy)
    if cached:
        print(f"  WARNING: ComfyUI took the sampler from its cache in {cached} request(s)")

    verdict = "PASS" if added < TARGET_MEDIAN_MS else "FAIL"
    target = f"target < {TARGET_MEDIAN_MS:.0f} ms"
    print(f"\nfacade overhead at the median (all the rest): {added:+.1f} ms ({target}): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50, help="requests per side (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted requests per side first (default 3)")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    endpoint = load_endpoints(ROOT / "workflows", load_manifest())[APP_ID]
    with darkroom_serve() as darkroom:
        print(
            f"darkroom {darkroom.base_url}; its worker {darkroom.worker_url} (pid {darkroom.worker['pid']})"
        )
        facade, comfy = asyncio.run(bench(darkroom, endpoint, args.requests, args.warmup))
    report(facade, comfy)


if __name__ == "__main__":
    main()

"""darkroom's overhead for scripts/bench_gpu.py: one request through darkroom's /queue (submit, poll the
status, fetch the result and its image) against the same graph POSTed straight to the worker's ComfyUI
(scripts/bench_facade.py's direct client: WebSocket, POST /prompt, GET /view). Binds only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from bench_facade import darkroom_serve, via_comfyui

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.engine.models import load_manifest  # noqa: E402
from server.generation.live import SAMPLER_CLASS_TYPES  # noqa: E402
from server.workflows.mapping import load_endpoints  # noqa: E402

DEMO_APP = "darkroom/demo-flux-2"


async def overhead_case(darkroom_url: str, px: int, steps: int, requests: int) -> dict[str, Any]:
    """The same FLUX.2 demo request (px x px, steps) through darkroom's /queue and as the raw graph
    POSTed to its worker, `requests` times each after one uncounted warm-up each: medians, seconds."""
    manifest = load_manifest()
    endpoint = load_endpoints(ROOT / "workflows", manifest)[DEMO_APP]
    samplers = {n for n, node in endpoint.workflow.items() if node.get("class_type") in SAMPLER_CLASS_TYPES}
    size = {"width": px, "height": px}
    queue_s, raw_s = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        async with s.get(f"{darkroom_url}/ready") as response:
            worker_url = str((await response.json())["workers"][0]["base_url"]).rstrip("/")
        for i in range(requests + 1):  # the first of each side loads the models: not counted
            body = {"prompt": "a lighthouse", "seed": 100 + i, "image_size": size}
            body["num_inference_steps"] = steps
            prompt, _ = endpoint.build_prompt(endpoint.validate(body | {"seed": 200 + i}), manifest)
            direct = via_comfyui(s, worker_url, prompt, endpoint.output.node, samplers)
            if i % 2:  # alternate which side goes first, so drift falls on both
                raw = (await direct).total_s
                queued = await via_queue(s, darkroom_url, body)
            else:
                queued = await via_queue(s, darkroom_url, body)
                raw = (await direct).total_s
            if i:
                queue_s.append(queued)
                raw_s.append(raw)
    q, r = statistics.median(queue_s), statistics.median(raw_s)
    return {"queue_s": round(q, 4), "raw_prompt_s": round(r, 4), "overhead_s": round(q - r, 4),
            "ratio": round(q / r, 4), "requests": requests}  # fmt: skip


async def via_queue(s: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> float:
    """Submit to /queue, poll the status until COMPLETED, fetch the result and its image: seconds."""
    started = time.perf_counter()
    async with s.post(f"{base}/queue/{DEMO_APP}", json=body) as response:
        submitted = await response.json()
        if response.status != 200:
            raise RuntimeError(f"/queue answered {response.status}: {submitted}")
    while True:
        async with s.get(submitted["status_url"]) as response:
            if (await response.json())["status"] == "COMPLETED":
                break
        await asyncio.sleep(0.01)
    async with s.get(submitted["response_url"]) as response:
        result = await response.json()
    async with s.get(result["images"][0]["url"]) as response:
        await response.read()
    return time.perf_counter() - started


@contextlib.contextmanager
def darkroom_for(url: str | None, cpu: bool) -> Iterator[str]:
    """The darkroom to measure: the one at `url`, or a `darkroom serve` started here (stopped after)."""
    if url:
        yield url.rstrip("/")
        return
    with darkroom_serve(cpu=cpu) as darkroom:
        yield darkroom.base_url

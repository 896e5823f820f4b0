"""Helpers for the queue/progress e2e tests: a facade over the session's real worker, slow endpoints.

The slow endpoints are the tiny FLUX.2 demo graph with the session worker's ``DarkroomTestSlow``
node between decoding and saving: it sleeps ``seconds`` in ``steps`` interruptible steps and sends
one preview, so a job is slow without using the CPU. Without a fixed seed every run samples anew
(ComfyUI would otherwise serve the whole graph from its cache).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from server.api.state import ENDPOINTS
from server.app import create_app
from server.engine.supervisor import Supervisor
from server.engine.worker import free_port
from server.settings import Settings
from server.workflows.mapping import Endpoint

DEMO = "darkroom/demo-flux-2"
Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def own_supervisor(
    stack_settings: Settings, comfyui_dir: Path, data: Path, *, nodes: str | None = None, **overrides: Any
) -> AsyncIterator[tuple[Supervisor, Client]]:
    """A supervisor of its own (for a test that kills or hangs its workers, or wants several) and a facade
    over it, stopped on leaving. Its workers take consecutive free ports; ``nodes``, a node file put in
    each worker's custom nodes."""
    workers = int(overrides.get("workers", stack_settings.workers))
    settings = replace(stack_settings, data_dir=str(data), worker_base_port=free_port(workers), **overrides)
    for index in range(workers if nodes is not None else 0):
        folder = settings.data_path / "workers" / str(index) / "custom_nodes"
        folder.mkdir(parents=True)
        (folder / "darkroom_test_nodes.py").write_text(nodes or "", encoding="utf-8")
    supervisor = Supervisor(settings, comfyui_dir)
    await supervisor.start()
    try:
        async with facade(settings, supervisor, data / "facade") as client:
            yield supervisor, client
    finally:
        await supervisor.stop()


def slow_endpoint(demo: Endpoint, app_id: str, *, seconds: float, steps: int) -> Endpoint:
    workflow = copy.deepcopy(demo.workflow)
    workflow["99"] = {
        "class_type": "DarkroomTestSlow",
        "inputs": {"image": ["12", 0], "seconds": seconds, "steps": steps},
    }
    workflow[demo.output.node]["inputs"]["images"] = ["99", 0]
    return replace(demo, app_id=app_id, workflow=workflow)


def facade(stack_settings: Settings, supervisor: Supervisor, data_dir: Path, **overrides: Any) -> Client:
    """The whole app over the session worker, with its own data dir (job store, outputs, key)."""
    settings = replace(stack_settings, data_dir=str(data_dir), **overrides)
    app = create_app(settings, supervisor, run_supervisor=False)
    endpoints = app[ENDPOINTS]
    endpoints["darkroom/test-slow"] = slow_endpoint(
        endpoints[DEMO], "darkroom/test-slow", seconds=30, steps=60
    )
    endpoints["darkroom/test-pause"] = slow_endpoint(
        endpoints[DEMO], "darkroom/test-pause", seconds=2, steps=8
    )
    return TestClient(TestServer(app, host="127.0.0.1"))


async def submit(client: Client, app_id: str = DEMO, body: dict[str, Any] | None = None, **kw: Any) -> str:
    response = await client.post(f"/queue/{app_id}", json=body or {"prompt": "a red cube"}, **kw)
    assert response.status == 200, await response.text()
    request_id: str = (await response.json())["request_id"]
    return request_id


async def status(client: Client, request_id: str, *, logs: bool = False) -> dict[str, Any]:
    response = await client.get(
        f"/queue/{DEMO}/requests/{request_id}/status", params={"logs": str(logs).lower()}
    )
    body: dict[str, Any] = await response.json()
    assert response.status == (200 if body["status"] == "COMPLETED" else 202)
    return body


async def wait_status(
    client: Client,
    request_id: str,
    wanted: str = "COMPLETED",
    *,
    timeout_s: float = 60.0,
    log: str | None = None,
) -> dict[str, Any]:
    """Poll like fal_client (every 0.1 s) until the status is ``wanted`` (and a log line contains ``log``)."""
    async with asyncio.timeout(timeout_s):
        while True:
            body = await status(client, request_id, logs=log is not None)
            if body["status"] == wanted and (
                log is None or any(log in e["message"] for e in body["logs"] or [])
            ):
                return body
            await asyncio.sleep(0.1)


def png(width: int, height: int, seed: int) -> str:
    """A noisy PNG data URI (noise, so that an image-to-video encode has detail to carry)."""
    image = Image.effect_noise((width, height), 40 + seed).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()

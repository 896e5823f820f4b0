"""Nothing is lost when the facade is killed: `darkroom serve` as a subprocess, SIGKILLed mid-job.

Queued jobs run after the restart, the job that was running is run again, results are served and a
webhook owed by a job that finished after the restart is delivered, signed, to a loopback receiver.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.queue.webhooks import verify_signature
from tests.serve_process import ServeProcess

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

DEMO = "darkroom/demo-flux-2"
# The most a CPU demo allows (about 3 s here), so the kill lands while it runs.
SLOW = {
    "prompt": "slow",
    "num_inference_steps": 12,
    "num_images": 2,
    "image_size": {"width": 512, "height": 512},
}


@pytest.fixture
def server(tmp_path: Path, tiny_models_dir: Path, comfyui_dir: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(
        tmp_path, tiny_models_dir, comfyui_dir, tmp_path / "serve.log",
        env={"DARKROOM_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "DARKROOM_WEBHOOK_BACKOFF_BASE_S": "0.2"},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop(timeout_s=30)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession, server: ServeProcess, body: dict[str, Any], **params: str
) -> str:
    async with http.post(f"{server.base}/queue/{DEMO}", json=body, params=params) as response:
        assert response.status == 200, await response.text()
        request_id: str = (await response.json())["request_id"]
        return request_id


async def status(http: aiohttp.ClientSession, server: ServeProcess, request_id: str) -> dict[str, Any]:
    async with http.get(f"{server.base}/queue/{DEMO}/requests/{request_id}/status") as response:
        body: dict[str, Any] = await response.json()
        return body


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_sigkill_mid_job_loses_nothing(server: ServeProcess, http: aiohttp.ClientSession) -> None:
    deliveries: list[tuple[float, dict[str, str], bytes]] = []
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        deliveries.append((time.monotonic(), dict(request.headers), await request.read()))
        delivered.set()
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as hook_server:
        await asyncio.to_thread(server.start)  # the loop serves the webhook receiver meanwhile
        slow = await submit(http, server, SLOW)
        fast = [await submit(http, server, {"prompt": f"fast {i}", "seed": i}) for i in range(2)]
        hooked = await submit(
            http, server, {"prompt": "hooked"}, fal_webhook=str(hook_server.make_url("/hook"))
        )
        async with asyncio.timeout(30):
            while (await status(http, server, slow))["status"] != "IN_PROGRESS":
                await asyncio.sleep(0.1)

        server.kill()
        killed_at = time.monotonic()
        async with asyncio.timeout(15):  # PDEATHSIG takes the ComfyUI worker down with the facade
            while not port_closed(server.worker_port):
                await asyncio.sleep(0.1)
        assert not delivered.is_set()

        await asyncio.to_thread(server.start, append_log=True)
        bodies: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(90):
            for request_id in (slow, *fast, hooked):
                while (body := await status(http, server, request_id))["status"] != "COMPLETED":
                    await asyncio.sleep(0.1)
                bodies[request_id] = body
            await delivered.wait()

        for body in bodies.values():
            assert "error" not in body, body
            async with http.get(body["response_url"]) as response:
                assert response.status == 200 and (await response.json())["images"]
        assert "was running when the server stopped: running it again" in server.log()
        async with http.get(server.base + "/.well-known/jwks.json") as response:
            jwks = await response.json()
        ((at, headers, payload),) = deliveries
        assert at > killed_at and verify_signature(jwks, headers, payload)
        assert headers["X-Fal-Webhook-Request-Id"] == hooked

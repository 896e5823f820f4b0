"""Nothing is lost when the facade is killed: `darkroom serve` as a subprocess, SIGKILLed mid-job.

Queued jobs run after the restart, the job that was running is run again, results are served and a
webhook owed by a job that finished after the restart is delivered, signed, to a loopback receiver.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.engine.worker import free_port
from server.queue.webhooks import verify_signature

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

DEMO = "darkroom/demo-flux-2"
# The most a CPU demo allows (about 3 s here), so the kill lands while it runs.
SLOW = {
    "prompt": "slow",
    "num_inference_steps": 12,
    "num_images": 2,
    "image_size": {"width": 512, "height": 512},
}


class Server:
    """One `darkroom serve` process on a fixed data dir and ports; start() again after a kill."""

    def __init__(self, data_dir: Path, models_dir: Path, comfyui_dir: Path) -> None:
        self.port, self.worker_port = free_port(), free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")} | {
            "DARKROOM_MODELS_DIR": str(models_dir),
            "DARKROOM_COMFYUI_DIR": str(comfyui_dir),
            "DARKROOM_WORKER_BASE_PORT": str(self.worker_port),
            "DARKROOM_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
            "DARKROOM_WEBHOOK_BACKOFF_BASE_S": "0.2",
            "OMP_NUM_THREADS": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("darkroom")), "serve", "--cpu", "--workers", "1"]
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server(tmp_path: Path, tiny_models_dir: Path, comfyui_dir: Path) -> Iterator[Server]:
    server = Server(tmp_path, tiny_models_dir, comfyui_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_ready(http: aiohttp.ClientSession, server: Server, timeout_s: float = 120) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
            try:
                async with http.get(server.url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)


async def submit(http: aiohttp.ClientSession, server: Server, body: dict[str, Any], **params: str) -> str:
    async with http.post(f"{server.url}/queue/{DEMO}", json=body, params=params) as response:
        assert response.status == 200, await response.text()
        request_id: str = (await response.json())["request_id"]
        return request_id


async def status(http: aiohttp.ClientSession, server: Server, request_id: str) -> dict[str, Any]:
    async with http.get(f"{server.url}/queue/{DEMO}/requests/{request_id}/status") as response:
        body: dict[str, Any] = await response.json()
        return body


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_sigkill_mid_job_loses_nothing(server: Server, http: aiohttp.ClientSession) -> None:
    deliveries: list[tuple[float, dict[str, str], bytes]] = []
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        deliveries.append((time.monotonic(), dict(request.headers), await request.read()))
        delivered.set()
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as hook_server:
        server.start()
        await wait_ready(http, server)
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

        server.start()
        await wait_ready(http, server)
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
        async with http.get(server.url + "/.well-known/jwks.json") as response:
            jwks = await response.json()
        ((at, headers, payload),) = deliveries
        assert at > killed_at and verify_signature(jwks, headers, payload)
        assert headers["X-Fal-Webhook-Request-Id"] == hooked

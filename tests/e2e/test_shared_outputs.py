"""Two hosts, one S3 bucket (DARKROOM_STORAGE_URL; moto's server on loopback): a demo run on host A
(`darkroom serve`, real ComfyUI on CPU) writes its output to the bucket; host B, another app with its
own empty data dir and no worker, serves the same bytes at the same /files path; once the result's
retention passes, A's queue deletes the objects and both hosts answer 404."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from server.app import create_app
from server.settings import load_settings
from tests.fakes import IdleSupervisor
from tests.s3 import S3Server
from tests.serve_process import ServeProcess

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

DEMO = "darkroom/demo-flux-2"
RETENTION_S = 10


@pytest.fixture
def host_a(
    tmp_path: Path, tiny_models_dir: Path, comfyui_dir: Path, storage_url: str, s3_server: S3Server
) -> Iterator[str]:
    """`darkroom serve` (one CPU worker) storing its files in the bucket; its base URL."""
    shared = {"DARKROOM_STORAGE_URL": storage_url, "DARKROOM_RESULT_RETENTION_S": str(RETENTION_S)}
    process = ServeProcess(
        tmp_path / "a", tiny_models_dir, comfyui_dir, tmp_path / "a.log", s3_server.env | shared
    )
    process.start(wait=False)  # the test waits for /ready
    try:
        yield process.base
    finally:
        if process.stop(timeout_s=30) not in (0, -signal.SIGTERM):
            print(process.tail())


@pytest_asyncio.fixture
async def host_b(tmp_path: Path, storage_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """Another host on the same bucket: its own empty data dir, no worker (it only serves files)."""
    settings = load_settings({}, data_dir=str(tmp_path / "b"), storage_url=storage_url)
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status in (200, 202), await response.text()  # 202 while queued or running
        return await response.json()


async def run_demo(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with asyncio.timeout(240):
        while True:  # the worker boots first
            try:
                async with http.get(f"{base}/ready") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        async with http.post(f"{base}/queue/{DEMO}", json={"prompt": "a shared cube", "seed": 7}) as response:
            assert response.status == 200, await response.text()
            request_id = (await response.json())["request_id"]
        requests = f"{base}/queue/{DEMO}/requests/{request_id}"
        while (await get_json(http, f"{requests}/status"))["status"] != "COMPLETED":
            await asyncio.sleep(0.25)
        result: dict[str, Any] = await get_json(http, requests)
        return result


async def test_an_output_written_by_one_host_is_served_by_another_until_it_expires(
    host_a: str,
    host_b: TestClient[web.Request, web.Application],
    storage_url: str,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as http:
        result = await run_demo(http, host_a)
        image = result["images"][0]
        path = URL(image["url"]).path
        request_id = path.split("/")[2]
        assert f"outputs/{request_id}/0.png" in s3_server.keys(storage_url)
        assert not (tmp_path / "a" / "outputs").exists() or not any(
            (tmp_path / "a" / "outputs").rglob("*.png")
        )

        async with http.get(host_a + path) as from_a:
            assert from_a.status == 200 and from_a.content_type == "image/png"
            bytes_a = await from_a.read()
        from_b = await host_b.get(path)
        assert from_b.status == 200 and from_b.content_type == "image/png"
        assert await from_b.read() == bytes_a and len(bytes_a) == image["file_size"]
        assert not (tmp_path / "b" / "outputs").exists()  # B never held a copy

        async with asyncio.timeout(RETENTION_S + 30):  # A's queue sweeps expired results each second
            while any(key.startswith(f"outputs/{request_id}/") for key in s3_server.keys(storage_url)):
                await asyncio.sleep(0.5)
        assert (await host_b.get(path)).status == 404
        async with http.get(host_a + path) as gone:
            assert gone.status == 404

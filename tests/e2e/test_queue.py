"""The queue API on the real stack: round trip, cancel (queued and running), signed webhooks with retry."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image
from queue_stack import DEMO, Client, facade, status, submit, wait_status

from server.engine.supervisor import Supervisor
from server.queue.webhooks import verify_signature
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    data_dir = tmp_path_factory.mktemp("queue-e2e")
    overrides: dict[str, Any] = {"webhook_allow_cidrs": "127.0.0.0/8", "webhook_backoff_base_s": 0.2}
    async with facade(stack_settings, supervisor, data_dir, **overrides) as test_client:
        yield test_client


async def test_submit_status_result_round_trip(client: Client) -> None:
    request_id = await submit(client, body={"prompt": "a red cube", "seed": 3})
    body = await wait_status(client, request_id)
    assert body["metrics"]["inference_time"] > 0 and "error" not in body
    response = await client.get(f"/queue/{DEMO}/requests/{request_id}")
    assert response.status == 200 and response.headers["x-fal-request-id"] == request_id
    result = await response.json()
    assert result["seed"] == 3 and result["prompt"] == "a red cube"
    (image,) = result["images"]
    assert f"/files/{request_id}/" in image["url"]
    served = await client.get("/" + image["url"].split("/", 3)[3])
    assert served.status == 200
    assert Image.open(io.BytesIO(await served.read())).size == (64, 64)


async def test_cancel_queued_and_running_then_the_worker_serves_the_next(
    client: Client, supervisor: Supervisor
) -> None:
    running = await submit(client, "darkroom/test-slow")  # 30 s unless interrupted
    queued = await submit(client)
    await wait_status(client, running, "IN_PROGRESS", log="DarkroomTestSlow")
    assert (await client.get(f"/queue/{DEMO}/requests/{queued}/status")).status == 202

    for request_id in (queued, running):
        started = time.monotonic()
        response = await client.put(f"/queue/{DEMO}/requests/{request_id}/cancel")
        assert response.status == 202 and await response.json() == {"status": "CANCELLATION_REQUESTED"}
        body = await wait_status(client, request_id, timeout_s=10)
        assert time.monotonic() - started < 5, "cancelling must not wait for the job to finish"
        assert body["error_type"] == "request_cancelled"
        result = await client.get(f"/queue/{DEMO}/requests/{request_id}")
        assert result.status == 499 and await result.json() == {
            "detail": "Request cancelled by the client.",
            "error_type": "request_cancelled",
        }

    (worker,) = supervisor.workers
    async with asyncio.timeout(10):
        while await worker.client.queue() != ([], []):  # ComfyUI dropped the interrupted prompt
            await asyncio.sleep(0.1)
    following = await submit(client)
    assert "error" not in await wait_status(client, following, timeout_s=30)
    response = await client.put(f"/queue/{DEMO}/requests/{running}/cancel")
    assert response.status == 400 and await response.json() == {"status": "ALREADY_COMPLETED"}


async def test_sync_runs_and_queue_jobs_share_the_worker_first_come_first_served(client: Client) -> None:
    first = await submit(client, "darkroom/test-pause")  # 2 s on the only worker
    await wait_status(client, first, "IN_PROGRESS")
    sync = asyncio.create_task(client.post(f"/run/{DEMO}", json={"prompt": "sync"}))
    await asyncio.sleep(0.3)  # the sync run now waits for the worker
    later = await submit(client)
    response = await sync
    assert response.status == 200 and (await response.json())["prompt"] == "sync"
    assert (await status(client, later))["status"] != "COMPLETED"  # it waited for the sync run
    await wait_status(client, later)


async def test_a_job_whose_worker_dies_runs_again_on_the_restarted_worker(
    client: Client, supervisor: Supervisor
) -> None:
    (worker,) = supervisor.workers
    restarts, pid = worker.restarts, worker.pid
    assert pid is not None
    request_id = await submit(client, "darkroom/test-pause", body={"prompt": "a red cube", "seed": 5})
    await wait_status(client, request_id, "IN_PROGRESS", log="DarkroomTestSlow")
    os.kill(pid, signal.SIGKILL)
    body = await wait_status(client, request_id, timeout_s=150, log="Lost its ComfyUI worker")
    assert "error" not in body, body
    assert worker.restarts == restarts + 1 and worker.pid != pid
    result = await client.get(f"/queue/{DEMO}/requests/{request_id}")
    assert result.status == 200 and len((await result.json())["images"]) == 1


class Receiver:
    """A loopback webhook endpoint that fails the first delivery with a 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str], bytes]] = []
        self.delivered = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((time.monotonic(), dict(request.headers), await request.read()))
        if len(self.calls) == 1:
            return web.Response(status=500, text="not yet")
        self.delivered.set()
        return web.Response(text="ok")


async def test_webhook_is_signed_and_retried_after_a_500(client: Client, tmp_path: Path) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as hook_server:
        url = str(hook_server.make_url("/hook"))
        request_id = await submit(client, params={"fal_webhook": url})
        await asyncio.wait_for(receiver.delivered.wait(), timeout=60)
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    result = await (await client.get(f"/queue/{DEMO}/requests/{request_id}")).json()
    assert len(receiver.calls) == 2 and receiver.calls[1][0] - receiver.calls[0][0] >= 0.2  # backed off
    for _, headers, body in receiver.calls:
        assert verify_signature(jwks, headers, body)
        assert headers["X-Fal-Webhook-Request-Id"] == request_id
        assert json.loads(body) == {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": result,
            "error": None,
        }
    tampered = receiver.calls[1][2].replace(b'"OK"', b'"ERROR"')
    assert not verify_signature(jwks, receiver.calls[1][1], tampered)

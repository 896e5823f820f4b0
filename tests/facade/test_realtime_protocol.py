"""fal's realtime WebSocket in-process: handshake refusals, msgpack in and out, errors that keep the
socket open, latest-wins buffering and cancel-on-close. The worker boundary is ``FakeGenerator``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from queue_fakes import FakeGenerator, FakeSupervisor

from server.api.state import GENERATOR, QUEUE
from server.app import create_app
from server.settings import Settings, load_settings
from tests import log_scan

APP = "darkroom/demo-flux-2"
KEY = {"Authorization": "Key rt-key"}

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys="rt-key")


@pytest_asyncio.fixture
async def fake(settings: Settings) -> FakeGenerator:
    return FakeGenerator(settings)


@pytest_asyncio.fixture
async def client(settings: Settings, fake: FakeGenerator) -> AsyncIterator[Client]:
    app = create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    app[GENERATOR] = fake  # type: ignore[assignment]
    app[QUEUE].generator = fake
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def mint(client: Client, app: str = "demo-flux-2", headers: dict[str, str] = KEY) -> str:
    response = await client.post("/tokens/", json={"allowed_apps": [app]}, headers=headers)
    token: str = await response.json()
    return token


async def receive(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, Any]:
    """("output", decoded msgpack) for a binary frame, (its "type", JSON) for a text frame."""
    message = await ws.receive(timeout=10)
    if message.type is aiohttp.WSMsgType.BINARY:
        return "output", msgpack.unpackb(message.data, raw=False)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    frame = json.loads(message.data)
    return frame["type"], frame


async def started(fake: FakeGenerator, count: int) -> None:
    async with asyncio.timeout(10):
        while len(fake.started) < count:
            await asyncio.sleep(0.01)


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        (f"/run/{APP}/realtime", {}, 401),
        (f"/run/{APP}/realtime?fal_jwt_token=bogus", {}, 401),
        (f"/run/{APP}/realtime", {"Authorization": "Key wrong"}, 401),
        ("/run/darkroom/no-such-app/realtime", KEY, 404),
        (f"/run/{APP}/realtime?max_buffering=0", KEY, 422),
        (f"/run/{APP}/realtime?max_buffering=61", KEY, 422),
        (f"/run/{APP}/realtime?max_buffering=two", KEY, 422),
    ],
)
async def test_handshake_refusals(client: Client, url: str, headers: dict[str, str], status: int) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url, headers=headers)
    assert refused.value.status == status


async def test_a_token_for_another_app_is_403(client: Client) -> None:
    token = await mint(client, "demo-flux-dev")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/run/{APP}/realtime?fal_jwt_token={token}")
    assert refused.value.status == 403


async def test_inputs_in_outputs_out_and_errors_keep_the_socket_open(client: Client) -> None:
    token = await mint(client)
    async with client.ws_connect(f"/run/{APP}/realtime?fal_jwt_token={token}&max_buffering=4") as ws:
        await ws.send_bytes(pack({"prompt": "x", "num_inference_steps": 500, "request_id": "bad"}))
        kind, error = await receive(ws)
        assert kind == "x-fal-error" and error["error"] == "validation_error" and error["request_id"] == "bad"
        assert error["detail"][0]["loc"] == ["body", "num_inference_steps"] and error["reason"]
        await ws.send_str('{"prompt": "as text"}')
        kind, error = await receive(ws)
        assert kind == "x-fal-error" and "binary msgpack" in error["reason"]
        for frame in (b"\xc1", pack([1, 2]), pack({"prompt": "x", "request_id": b"raw"})):
            await ws.send_bytes(frame)
            kind, error = await receive(ws)
            assert kind == "x-fal-error" and error["status_code"] == 422, frame

        await ws.send_bytes(pack({"prompt": "a cube", "request_id": "r-1"}))
        kind, output = await receive(ws)
        assert kind == "output" and output["prompt"] == "a cube" and output["request_id"] == "r-1"
        assert output["images"][0]["url"].startswith("http://127.0.0.1:")
        kind, timings = await receive(ws)
        assert (kind, timings["action"], timings["request_id"]) == ("x-fal-message", "timings", "r-1")
        assert timings["timing"] >= 0

        await ws.send_bytes(pack({"prompt": "fail"}))  # a failed run is an error frame, not a close
        kind, error = await receive(ws)
        assert kind == "x-fal-error" and error["error"] == "generation_error" and "request_id" not in error
        await ws.send_bytes(pack({"prompt": "again"}))
        kind, output = await receive(ws)
        assert kind == "output" and output["prompt"] == "again" and "request_id" not in output


async def test_while_one_input_runs_the_newest_waiting_inputs_win(
    client: Client, fake: FakeGenerator
) -> None:
    fake.hold = True
    async with client.ws_connect(f"/run/{APP}/realtime?max_buffering=1", headers=KEY) as ws:
        await ws.send_bytes(pack({"prompt": "first", "request_id": "1"}))
        await started(fake, 1)
        for n in (2, 3):
            await ws.send_bytes(pack({"prompt": f"p{n}", "request_id": str(n)}))
        kind, dropped = await receive(ws)
        assert (kind, dropped["action"], dropped["request_id"]) == ("x-fal-message", "dropped", "2")
        fake.release(fake.started[0])
        assert (await receive(ws))[1]["request_id"] == "1"
        assert (await receive(ws))[1]["action"] == "timings"
        await started(fake, 2)
        fake.release(fake.started[1])
        kind, output = await receive(ws)
        assert kind == "output" and output["request_id"] == "3" and output["prompt"] == "p3"


async def test_closing_the_socket_cancels_the_running_input(client: Client, fake: FakeGenerator) -> None:
    fake.hold = True
    async with client.ws_connect(f"/run/{APP}/realtime", headers=KEY) as ws:
        await ws.send_bytes(pack({"prompt": "long"}))
        await started(fake, 1)
    async with asyncio.timeout(10):
        while fake.cancelled != fake.started:
            await asyncio.sleep(0.01)


async def test_inputs_are_metered_and_limited_per_message_under_the_key_s_limits(client: Client) -> None:
    """A managed key's realtime inputs: each that runs is a usage row as a /run is; one past the key's
    rate is fal's error frame with the 429 reason, the socket stays open, and a raised limit applies at
    once to the open socket (so does a spent cost budget: 402)."""
    created = await client.post("/keys", json={"name": "rt-runner", "rate_per_min": 1}, headers=KEY)
    secret = (await created.json())["key"]
    log_scan.register(secret)
    token = await mint(client, headers={"Authorization": f"Key {secret}"})
    async with client.ws_connect(f"/run/{APP}/realtime?fal_jwt_token={token}") as ws:
        await ws.send_bytes(pack({"prompt": "one", "request_id": "1"}))
        assert (await receive(ws))[0] == "output" and (await receive(ws))[1]["action"] == "timings"
        await ws.send_bytes(pack({"prompt": "two", "request_id": "2"}))
        kind, error = await receive(ws)
        assert (kind, error["status_code"], error["error"], error["request_id"]) == (
            "x-fal-error", 429, "rate_limited", "2"
        )  # fmt: skip
        assert "1 requests a minute" in error["reason"]
        raised = {"rate_per_min": 100, "monthly_usd": 0}
        assert (await client.patch("/keys/rt-runner", json=raised, headers=KEY)).status == 200
        await ws.send_bytes(pack({"prompt": "three", "request_id": "3"}))
        kind, error = await receive(ws)
        assert (kind, error["status_code"], error["error"]) == ("x-fal-error", 402, "budget_exceeded")
        assert "monthly_usd" in error["reason"]
        await client.patch("/keys/rt-runner", json={"rate_per_min": 100}, headers=KEY)
        await ws.send_bytes(pack({"prompt": "four", "request_id": "4"}))
        kind, output = await receive(ws)
        assert kind == "output" and output["request_id"] == "4"
    usage = await (await client.get("/usage?key=rt-runner&group_by=key,endpoint", headers=KEY)).json()
    (row,) = usage["rows"]
    assert (row["endpoint"], row["requests"], row["succeeded"]) == (APP, 2, 2)  # "one" and "four"
    assert row["megapixels"] > 0

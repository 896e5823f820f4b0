"""Live progress on the real stack: the /ws socket (submit, subscribe, resubscribe) and /run/.../stream."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image
from queue_stack import DEMO, Client, facade, submit

from server.engine.supervisor import Supervisor
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    async with facade(stack_settings, supervisor, tmp_path_factory.mktemp("progress-e2e")) as test_client:
        yield test_client


async def events_until_terminal(ws: aiohttp.ClientWebSocketResponse, request_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while True:
            event = await ws.receive_json(timeout=60)
            if event.get("request_id") != request_id:
                continue
            events.append(event)
            if event["type"] in ("completed", "failed"):
                return events


def steps(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(e["node"], e["step"], e["total"]) for e in events if e["type"] == "progress"]


async def test_ws_submit_streams_steps_in_order_then_the_result(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        body = {"prompt": "a red cube", "num_inference_steps": 6}
        await ws.send_json({"action": "submit", "app_id": DEMO, "input": body, "ref": 7})
        submitted = await ws.receive_json()
        assert submitted["type"] == "submitted" and submitted["ref"] == 7
        assert submitted["status_url"].endswith(f"/requests/{submitted['request_id']}/status")
        events = await events_until_terminal(ws, submitted["request_id"])
    kinds = [e["type"] for e in events]
    assert kinds.index("started") < kinds.index("progress") and kinds[-1] == "completed"
    assert [(node, step) for node, step, _ in steps(events)] == [("11", n) for n in range(1, 7)]
    fractions = [e["fraction"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = events[-1]["result"]
    assert result["prompt"] == "a red cube" and result["images"][0]["width"] == 64


async def test_two_subscribers_see_the_same_stream_with_a_preview(client: Client) -> None:
    blocker = await submit(client, "darkroom/test-pause")  # holds the worker so the next one waits
    target = await submit(client, "darkroom/test-pause")
    async with client.ws_connect("/ws") as first, client.ws_connect("/ws") as second:
        for ws in (first, second):
            await ws.send_json({"action": "subscribe", "request_ids": [target]})
        seen = await asyncio.gather(
            events_until_terminal(first, target), events_until_terminal(second, target)
        )
    assert seen[0] == seen[1]
    events = seen[0]
    assert events[0]["type"] == "queued" and events[-1]["type"] == "completed"
    assert [s for s in steps(events) if s[0] == "99"] == [("99", n, 8) for n in range(1, 9)]
    (preview,) = [e for e in events if e["type"] == "preview"]  # the test node sends one
    image = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
    assert image.format == "JPEG" and max(image.size) <= 256 and preview["node"] == "99"
    await client.put(f"/queue/{DEMO}/requests/{blocker}/cancel")


async def test_a_reconnecting_client_gets_the_current_state_at_once(client: Client) -> None:
    request_id = await submit(client, "darkroom/test-pause")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"action": "subscribe", "request_ids": [request_id]})
        async with asyncio.timeout(30):
            while (event := await ws.receive_json())["type"] != "progress" or event["node"] != "99":
                pass
    last_step = event["step"]

    async with client.ws_connect("/ws") as ws:
        asked = time.monotonic()
        await ws.send_json({"action": "subscribe", "request_ids": [request_id]})
        state = await ws.receive_json(timeout=5)
        assert time.monotonic() - asked < 0.5
        assert state["type"] == "progress" and state["node"] == "99" and state["step"] >= last_step
        rest = await events_until_terminal(ws, request_id)
    assert any(e["type"] == "log" and "DarkroomTestSlow" in e["message"] for e in rest)

    async with client.ws_connect("/ws") as ws:  # after the end: state, logs and the result at once
        await ws.send_json({"action": "subscribe", "request_ids": ["no-such-id"]})
        error = await ws.receive_json(timeout=5)
        assert {"type": "error", "status_code": 404, "request_id": "no-such-id"}.items() <= error.items()
        await ws.send_json({"action": "subscribe", "request_ids": [request_id]})
        replay = await events_until_terminal(ws, request_id)
        assert replay[-1]["type"] == "completed" and replay[-1]["result"]["images"]


async def test_ws_refuses_bad_messages_and_bad_input(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("not json")
        assert (await ws.receive_json())["error_type"] == "bad_message"
        await ws.send_json({"action": "submit", "app_id": DEMO, "input": {"prompt": ""}, "ref": "x"})
        error = await ws.receive_json()
        assert (
            error["status_code"] == 422
            and error["ref"] == "x"
            and error["detail"][0]["loc"] == ["body", "prompt"]
        )


async def test_run_stream_sends_progress_then_the_output(client: Client) -> None:
    response = await client.post(f"/run/{DEMO}/stream", json={"prompt": "a cube", "num_inference_steps": 4})
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    chunks = [c for c in (await response.text()).split("\n\n") if c]
    assert all(c.startswith("data: ") for c in chunks)
    events = [json.loads(c[6:]) for c in chunks]  # every event is JSON, as fal_client needs
    assert [(e["step"], e["total"]) for e in events if e.get("type") == "progress"] == [
        (n, 4) for n in range(1, 5)
    ]
    assert events[-1]["images"] and events[-1]["prompt"] == "a cube" and "type" not in events[-1]

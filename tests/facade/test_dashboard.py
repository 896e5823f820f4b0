"""The dashboard's data: queue with ages and positions, workers, model files, failures; cancel; live."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, LOADED, FakeGenerator

from server.settings import Settings, load_settings

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Key dash-key"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys="dash-key")


async def submit(client: Client, prompt: str) -> str:
    response = await client.post(f"/queue/{APP}", json={"prompt": prompt}, headers=AUTH)
    request_id: str = (await response.json())["request_id"]
    return request_id


async def dashboard_state(client: Client) -> dict[str, Any]:
    state: dict[str, Any] = await (await client.get("/dashboard/state", headers=AUTH)).json()
    return state


async def test_without_a_session_the_sign_in_page(client: Client) -> None:
    page = await client.get("/dashboard", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/editor/login?next=/dashboard"
    sign_in = await client.get("/editor/login?next=/dashboard")
    assert 'name="next" value="/dashboard"' in await sign_in.text()
    assert (await client.get("/editor/login?next=//evil.example")).status == 200  # and leads to /editor/
    for path in ("/dashboard/state", "/dashboard/events"):
        assert (await client.get(path)).status == 401
    assert (await client.post("/dashboard/requests/x/cancel")).status == 401


async def test_state_shows_the_queue_workers_models_and_failures(client: Client, fake: FakeGenerator) -> None:
    running, waiting = await submit(client, "a cube"), await submit(client, "a sphere")
    await fake.wait_started(running)
    state = await (await client.get("/dashboard/state", headers=AUTH)).json()
    rows = {row["request_id"]: row for row in state["queue"]}
    assert rows[running]["status"] == "IN_PROGRESS" and rows[running]["running_s"] is not None
    assert rows[waiting]["status"] == "IN_QUEUE" and rows[waiting]["position"] == 0
    assert [row["request_id"] for row in state["queue"]] == [running, waiting], "running first"
    assert state["workers"][0]["id"] == 0 and "log" in state["workers"][0]
    assert state["workers"][0]["loaded_models"] == LOADED, "what the worker's /darkroom/loaded says"
    models = {m["name"]: m for m in state["models"]}
    assert (
        models["flux2-vae"]["fetch"].startswith("darkroom models fetch flux2-vae")
        and not models["flux2-vae"]["present"]
    )
    assert models["tiny-flux2-vae"]["fetch"] is None, "generated files are built, not fetched"

    cancelled = await client.post(f"/dashboard/requests/{waiting}/cancel", headers=AUTH)
    assert cancelled.status == 200 and (await cancelled.json())["result"] == "CANCELLATION_REQUESTED"
    fake.release(running)
    failing = await submit(client, "fail")
    fake.release(failing)
    async with asyncio.timeout(10):  # until the failing run has ended (the cancelled one already has)
        while True:
            state = await dashboard_state(client)
            if failing in {f["request_id"] for f in state["failures"]}:
                break
            await asyncio.sleep(0.02)
    assert {(f["request_id"], f["status"]) for f in state["failures"]} >= {(failing, 500), (waiting, 499)}
    assert [row["request_id"] for row in state["queue"]] == [], "nothing left waiting or running"


async def test_events_send_a_snapshot_then_changes(client: Client, fake: FakeGenerator) -> None:
    async with client.get("/dashboard/events", headers=AUTH) as stream:
        assert stream.content_type == "text/event-stream"
        first = await _next_event(stream)
        assert first["queue"] == []
        request_id = await submit(client, "a cube")
        changed = await _next_event(stream)
        assert [row["request_id"] for row in changed["queue"]] == [request_id]
        fake.release(request_id)


async def _next_event(stream: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        async for line in stream.content:
            if line.startswith(b"data:"):
                parsed: dict[str, Any] = json.loads(line[5:])
                return parsed
    raise AssertionError("the stream ended")

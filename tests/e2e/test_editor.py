"""The editor behind darkroom's keys on the real stack: sign-in, the relayed frontend and API, and runs
from the editor sharing the worker with API requests through darkroom's queue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import WSMsgType
from queue_stack import DEMO, Client, facade, submit

from server.api.state import ENDPOINTS
from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

KEY = "editor-test-key"
AUTH = {"Authorization": f"Key {KEY}"}


async def finished(client: Client, request_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    """The request's final status, polled with the key (the queue's status route needs one)."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await client.get(f"/queue/{DEMO}/requests/{request_id}/status", headers=AUTH)
            body: dict[str, Any] = await response.json()
            if body["status"] == "COMPLETED":
                return body
            await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    async with facade(stack_settings, supervisor, tmp_path_factory.mktemp("editor-e2e"), api_keys=KEY) as c:
        yield c


def origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{client.server.port}"}


async def signed_in(client: Client) -> dict[str, str]:
    """Sign in through the form; the cookie jar keeps the session, the headers carry our Origin."""
    response = await client.post(
        "/editor/login", data={"key": KEY}, headers=origin(client), allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/editor/"
    cookie = response.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"):
        assert flag in cookie, cookie
    return origin(client)


def demo_prompt(client: Client, seed: int) -> dict[str, Any]:
    endpoint = client.app[ENDPOINTS][DEMO]
    prompt, _ = endpoint.build_prompt(
        endpoint.validate({"prompt": "from the editor", "seed": seed}), load_manifest()
    )
    return prompt


async def test_without_a_session_only_the_sign_in_page(client: Client) -> None:
    client.session.cookie_jar.clear()
    index = await client.get("/editor/", allow_redirects=False)
    assert index.status == 303 and index.headers["Location"] == "/editor/login"
    page = await client.get("/editor/login")
    assert page.status == 200 and 'name="key"' in await page.text()
    routes = sorted(
        {r.resource.canonical for r in client.app.router.routes() if r.resource is not None}
        - {"/editor", "/editor/", "/editor/login", "/editor/logout"}
    )
    assert [r for r in routes if r.startswith("/editor")] == [
        "/editor/api/interrupt", "/editor/api/prompt", "/editor/api/queue", "/editor/user.css", "/editor/ws",
        "/editor/{tail}",
    ]  # fmt: skip
    paths = (
        "/editor/api/object_info",
        "/editor/assets/index.js",
        "/editor/ws",
        "/editor/api/prompt",
        "/editor/user.css",
    )
    for path in paths:
        for method in ("GET", "POST"):
            response = await client.request(method, path, headers=origin(client))
            assert response.status == 401, (method, path, response.status)
    wrong = await client.post("/editor/login", data={"key": "nope"}, headers=origin(client))
    assert wrong.status == 401 and "not one of this server&#x27;s API keys" in await wrong.text()
    forged = await client.post("/editor/login", data={"key": KEY}, headers={"Origin": "https://evil.example"})
    assert forged.status == 403


async def test_the_editor_and_its_api_through_the_facade(client: Client) -> None:
    headers = await signed_in(client)
    page = await client.get("/editor/")
    assert page.status == 200 and "<title>ComfyUI</title>" in await page.text()
    info = await (await client.get("/editor/api/object_info")).json()
    ours = {name: node["category"] for name, node in info.items() if name.startswith("Darkroom")}
    assert "DarkroomInputText" in ours and all(c.startswith("darkroom") for c in ours.values())
    loaders = info["DarkroomFluxLoader"]["input"]["required"]["model_name"]
    assert any("tiny/" in option for option in json.dumps(loaders).split('"')), "the models folder's files"
    refused = await client.post("/editor/api/free", json={"unload_models": True}, headers=headers)
    assert refused.status == 403 and "not relayed" in (await refused.json())["detail"]
    cross_site = await client.post("/editor/api/prompt", json={}, headers={"Origin": "https://evil.example"})
    assert cross_site.status == 403
    listed = await client.get("/workflows", headers=headers)
    assert listed.status == 200, "the session may use the publishing API too"


async def test_an_editor_run_and_api_requests_share_the_worker(client: Client) -> None:
    headers = await signed_in(client)
    async with client.ws_connect("/editor/ws?clientId=editor-tab-1", headers=headers) as ws:
        api_ids = [
            await submit(client, body={"prompt": f"api {i}", "seed": 100 + i}, headers=AUTH) for i in range(5)
        ]
        queued = await client.post(
            "/editor/api/prompt", headers=headers,
            json={
                "prompt": demo_prompt(client, 7), "client_id": "editor-tab-1",
                "extra_data": {"preview_method": "latent2rgb"},  # as the editor sends its preview setting
            },
        )  # fmt: skip
        assert queued.status == 200, await queued.text()
        prompt_id = (await queued.json())["prompt_id"]
        events, previews = await _events_until_done(ws, prompt_id)
    assert {"execution_start", "progress", "executed", "execution_success"} <= set(events), events
    assert previews > 0, "live previews reach the editor (binary frames)"
    for request_id in [*api_ids, prompt_id]:
        status = await finished(client, request_id)
        assert "error" not in status, status
    result = await (await client.get(f"/queue/darkroom/editor/requests/{prompt_id}", headers=AUTH)).json()
    assert result["prompt_id"] == prompt_id and result["outputs"], result
    for request_id in api_ids:
        body = await (await client.get(f"/queue/{DEMO}/requests/{request_id}", headers=AUTH)).json()
        assert len(body["images"]) == 1, body


async def test_workflows_save_and_load_in_the_user_directory(client: Client) -> None:
    headers = await signed_in(client)
    saved = {"nodes": [], "links": [], "version": 0.4}
    put = await client.post(
        "/editor/api/userdata/workflows%2Fmine.json?overwrite=true", json=saved, headers=headers
    )
    assert put.status == 200, await put.text()
    listed = await (await client.get("/editor/api/userdata?dir=workflows")).json()
    assert "mine.json" in listed
    assert await (await client.get("/editor/api/userdata/workflows%2Fmine.json")).json() == saved


async def test_cancelling_in_the_editor_cancels_only_its_run(client: Client) -> None:
    headers = await signed_in(client)
    slow = await submit(client, "darkroom/test-pause", headers=AUTH)  # 2 s
    queued = await client.post(
        "/editor/api/prompt", headers=headers,
        json={"prompt": demo_prompt(client, 8), "client_id": "editor-tab-2"},
    )  # fmt: skip
    prompt_id = (await queued.json())["prompt_id"]
    assert (
        await client.post("/editor/api/interrupt", json={"prompt_id": slow}, headers=headers)
    ).status == 200
    assert (
        await client.post("/editor/api/queue", json={"delete": [prompt_id]}, headers=headers)
    ).status == 200
    cancelled = await finished(client, prompt_id)
    assert cancelled.get("error_type") == "request_cancelled", cancelled
    assert "error" not in await finished(client, slow), "an editor cancel never touches an API request"


async def _events_until_done(ws: Any, prompt_id: str) -> tuple[list[str], int]:
    """The run's event types as the editor's socket gets them, and how many preview frames came."""
    seen: list[str] = []
    previews = 0
    async with asyncio.timeout(120):
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                previews += 1
                continue
            data = json.loads(message.data)
            if data.get("type") == "progress" or data.get("data", {}).get("prompt_id") == prompt_id:
                seen.append(data["type"])
                if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
    return seen, previews


async def test_open_access_needs_no_sign_in_but_still_refuses_other_sites(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with facade(stack_settings, supervisor, tmp_path_factory.mktemp("editor-open")) as open_client:
        page = await open_client.get("/editor/")
        assert page.status == 200 and "<title>ComfyUI</title>" in await page.text()
        assert (await open_client.get("/editor/login", allow_redirects=False)).status == 303
        forged = await open_client.post(
            "/editor/api/prompt", json={}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status == 403, "a page on another site cannot queue runs on a loopback editor"
        css = await open_client.get("/editor/user.css")
        assert css.status == 200, "a new user directory has what the editor asks for"


async def test_shutdown_closes_an_open_editor_socket_at_once(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> None:
    editor = facade(stack_settings, supervisor, tmp_path_factory.mktemp("editor-stop"))
    await editor.start_server()
    async with aiohttp.ClientSession() as browser:  # not the test client's: closing it closes its sockets
        url = str(editor.make_url("/editor/ws?clientId=stop-tab"))
        async with browser.ws_connect(url, headers=origin(editor)) as ws:
            assert (await ws.receive_json(timeout=30))["type"] == "status"  # relayed from the worker
            started = time.monotonic()
            await editor.close()
            elapsed_s = time.monotonic() - started
            assert elapsed_s < 15, f"shutdown waited {elapsed_s:.1f} s for the editor's socket"
            async with asyncio.timeout(5):
                while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                    pass

"""Tokens in-process: ``POST /tokens/``, ``/ws`` from a browser-like client (no header, a token in the
query), scope enforcement, restarts, and the user id each key signs its webhooks with. The worker
boundary is ``FakeGenerator``; the webhook sender and receiver are real (loopback)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from queue_fakes import FakeGenerator, FakeSupervisor

from server.api.state import GENERATOR, QUEUE
from server.app import create_app
from server.queue.webhooks import verify_signature
from server.settings import Settings, load_settings
from tests import log_scan

APP = "darkroom/demo-flux-2"
OTHER = "darkroom/demo-flux-dev"
ALICE = {"Authorization": "Key alice-key"}
PLAIN = {"Authorization": "Key plain-key"}

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {}, data_dir=str(tmp_path), api_keys="alice-key alice,plain-key", webhook_allow_cidrs="127.0.0.0/8"
    )


@pytest_asyncio.fixture
async def fake(settings: Settings) -> FakeGenerator:
    return FakeGenerator(settings)


def serve(settings: Settings, fake: FakeGenerator) -> Client:
    app = create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    app[GENERATOR] = fake  # type: ignore[assignment]
    app[QUEUE].generator = fake
    app[QUEUE].shutdown_grace_s = 0.0
    return TestClient(TestServer(app, host="127.0.0.1"))


@pytest_asyncio.fixture
async def client(settings: Settings, fake: FakeGenerator) -> AsyncIterator[Client]:
    async with serve(settings, fake) as test_client:
        yield test_client


async def mint(client: Client, apps: list[str], headers: dict[str, str] = ALICE, **body: Any) -> str:
    response = await client.post("/tokens/", json={"allowed_apps": apps, **body}, headers=headers)
    assert response.status == 200, await response.text()
    token = await response.json()
    assert isinstance(token, str), "fal's SDKs expect a bare JSON string"
    return token


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, request_id: str | None = None) -> Any:
    async with asyncio.timeout(10):
        while True:
            message = await ws.receive_json()
            if message["type"] == kind and (request_id is None or message.get("request_id") == request_id):
                return message


async def test_post_tokens_mints_a_scoped_token_for_the_keys_user(client: Client) -> None:
    token = await mint(client, ["demo-flux-2"], token_expiration=60)
    assert claims(token)["allowed_apps"] == ["demo-flux-2"] and claims(token)["sub"] == "alice"
    assert "sub" not in claims(await mint(client, ["x"], headers=PLAIN))
    response = await client.post("/tokens", json={"allowed_apps": ["x"]}, headers=ALICE)  # no slash
    assert response.status == 200


async def test_only_a_key_mints_tokens(client: Client) -> None:
    token = await mint(client, ["demo-flux-2"])
    for headers in ({}, {"Authorization": f"Bearer {token}"}, {"Authorization": f"Key {token}"}):
        response = await client.post("/tokens/", json={"allowed_apps": ["demo-flux-2"]}, headers=headers)
        body = await response.json()
        assert response.status == 401 and body["error_type"] == "unauthorized", headers


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"allowed_apps": ["demo"], "token_expiration": 0}, ["body", "token_expiration"]),
        ({"allowed_apps": ["demo"], "token_expiration": 3601}, ["body", "token_expiration"]),
        ({"allowed_apps": []}, ["body", "allowed_apps"]),
        ({"allowed_apps": ["demo"], "extra": 1}, ["body", "extra"]),
        ("not json", ["body"]),
    ],
)
async def test_bad_token_requests_are_422(client: Client, body: Any, loc: list[str]) -> None:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    response = await client.post("/tokens/", headers=ALICE, **kwargs)
    detail = (await response.json())["detail"]
    assert response.status == 422 and detail[0]["loc"] == loc and detail[0]["msg"]


async def test_ws_handshake_needs_a_key_or_a_token(client: Client) -> None:
    token = await mint(client, ["demo-flux-2"])
    for url, headers in (
        ("/ws", {}),
        ("/ws?fal_jwt_token=bogus", {}),
        ("/ws?fal_jwt_token=bogus", ALICE),  # a token, when given, is checked
        ("/ws", {"Authorization": "Key wrong"}),
        (f"/ws?fal_jwt_token={token[:-2]}", {}),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(url, headers=headers)
        assert refused.value.status == 401, url
    for url, headers in (
        ("/ws", ALICE),
        (f"/ws?fal_jwt_token={token}", {}),
        ("/ws", {"Authorization": f"Bearer {token}"}),
    ):
        async with client.ws_connect(url, headers=headers) as ws:
            await ws.send_json({"action": "subscribe", "request_ids": ["nope"]})
            assert (await ws.receive_json())["status_code"] == 404, url


async def test_a_browser_token_reaches_only_its_apps(client: Client) -> None:
    token = await mint(client, ["demo-flux-2"])
    other = await client.post(f"/queue/{OTHER}", json={"prompt": "theirs"}, headers=PLAIN)
    other_id = (await other.json())["request_id"]
    async with client.ws_connect(f"/ws?fal_jwt_token={token}") as ws:  # no Authorization header
        await ws.send_json({"action": "submit", "app_id": APP, "input": {"prompt": "mine"}, "ref": 1})
        submitted = await next_of(ws, "submitted")
        assert submitted["ref"] == 1
        completed = await next_of(ws, "completed", submitted["request_id"])
        assert completed["result"]["prompt"] == "mine"

        await ws.send_json({"action": "submit", "app_id": OTHER, "input": {"prompt": "x"}, "ref": 2})
        refused = await next_of(ws, "error")
        assert (refused["status_code"], refused["error_type"], refused["ref"]) == (403, "forbidden", 2)
        assert OTHER in refused["detail"] and "demo-flux-2" in refused["detail"]

        await ws.send_json({"action": "subscribe", "request_ids": [other_id, submitted["request_id"]]})
        refused = await next_of(ws, "error")
        assert refused["status_code"] == 403 and refused["request_id"] == other_id
        assert (await next_of(ws, "completed"))["request_id"] == submitted["request_id"]

        sync = await client.post(f"/run/{APP}", json={"prompt": "sync"}, headers=ALICE)
        await ws.send_json({"action": "subscribe", "request_ids": [sync.headers["x-fal-request-id"]]})
        refused = await next_of(ws, "error")
        assert refused["status_code"] == 403 and "not a queue request" in refused["detail"]

        # Its own app, but another user's request (submitted with another key): refused too.
        theirs = await client.post(f"/queue/{APP}", json={"prompt": "theirs"}, headers=PLAIN)
        alices = await client.post(f"/queue/{APP}", json={"prompt": "alice's"}, headers=ALICE)
        theirs_id, alices_id = (await theirs.json())["request_id"], (await alices.json())["request_id"]
        await ws.send_json({"action": "subscribe", "request_ids": [theirs_id, alices_id]})
        refused = await next_of(ws, "error")
        assert refused["request_id"] == theirs_id and "another user" in refused["detail"]
        assert (await next_of(ws, "completed", alices_id))["result"]["prompt"] == "alice's"


async def test_tokens_survive_a_restart_and_stay_with_their_data_dir(
    settings: Settings, fake: FakeGenerator, tmp_path: Path
) -> None:
    async with serve(settings, fake) as first:
        token = await mint(first, ["demo-flux-2"])
    # A restart, or a second process on the same data directory, accepts it.
    async with serve(settings, fake) as again, again.ws_connect(f"/ws?fal_jwt_token={token}") as ws:
        assert not ws.closed
    elsewhere = load_settings({}, data_dir=str(tmp_path / "other"), api_keys="alice-key alice")
    async with serve(elsewhere, fake) as stranger:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stranger.ws_connect(f"/ws?fal_jwt_token={token}")
        assert refused.value.status == 401


async def test_upload_tokens_and_app_tokens_do_not_stand_in_for_each_other(client: Client) -> None:
    upload = (await (await client.post("/storage/auth/token", json={}, headers=ALICE)).json())["token"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws?fal_jwt_token={upload}")
    assert refused.value.status == 401
    token = await mint(client, ["demo-flux-2"])
    response = await client.post("/files/upload", data=b"x", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401
    response = await client.post("/files/upload", data=b"x", headers={"Authorization": f"Bearer {upload}"})
    assert response.status == 200


class Receiver:
    def __init__(self, expected: int) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.expected = expected
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        if len(self.calls) >= self.expected:
            self.done.set()
        return web.Response(text="ok")


async def test_webhooks_are_signed_with_the_submitting_keys_user(client: Client) -> None:
    receiver = Receiver(expected=4)
    hooks = web.Application()
    hooks.router.add_post("/hook", receiver.handle)
    async with TestServer(hooks, host="127.0.0.1") as hook_server:
        url = str(hook_server.make_url("/hook"))
        expected: dict[str, str] = {}
        for headers, user_id in ((ALICE, "alice"), (PLAIN, "darkroom")):
            response = await client.post(
                f"/queue/{APP}?fal_webhook={url}", json={"prompt": "q"}, headers=headers
            )
            expected[(await response.json())["request_id"]] = user_id
        for headers, user_id in ((ALICE, "alice"), (PLAIN, "darkroom")):
            token = await mint(client, ["demo-flux-2"], headers=headers)
            async with client.ws_connect(f"/ws?fal_jwt_token={token}") as ws:
                submit = {"action": "submit", "app_id": APP, "input": {"prompt": "w"}, "webhook_url": url}
                await ws.send_json(submit)
                expected[(await next_of(ws, "submitted"))["request_id"]] = user_id
        async with asyncio.timeout(20):
            await receiver.done.wait()
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    seen = {h["X-Fal-Webhook-Request-Id"]: h["X-Fal-Webhook-User-Id"] for h, _ in receiver.calls}
    assert seen == expected
    assert all(verify_signature(jwks, headers, body) for headers, body in receiver.calls)


async def test_a_token_in_the_query_opens_the_stream_route_of_its_apps_only(client: Client) -> None:
    """fal's JS client in connectionMode "client" streams with ?fal_jwt_token= instead of a key."""
    token = await mint(client, ["demo-flux-2"])
    body = {"prompt": "a red cube"}
    streamed = await client.post(f"/run/{APP}/stream", json=body, params={"fal_jwt_token": token})
    assert streamed.status == 200 and streamed.content_type == "text/event-stream"
    assert '"images"' in await streamed.text()
    other = await client.post(f"/run/{OTHER}/stream", json=body, params={"fal_jwt_token": token})
    assert other.status == 403 and "demo-flux-2" in (await other.json())["detail"]
    plain_run = await client.post(f"/run/{APP}", json=body, params={"fal_jwt_token": token})
    assert plain_run.status == 401  # only the stream route takes tokens; everything else needs a key
    forged = await client.post(f"/run/{APP}/stream", json=body, params={"fal_jwt_token": token[:-2] + "xx"})
    assert forged.status == 401


async def test_a_token_does_not_stand_in_for_a_key_on_a_requests_urls(client: Client) -> None:
    """A browser token (for its own apps) opens only the socket and stream routes: a request's status,
    result and cancel, even of its own app and user, still need a key, however the token is sent."""
    token = await mint(client, ["demo-flux-2"])
    mine = await client.post(f"/queue/{APP}", json={"prompt": "mine"}, headers=ALICE)
    base = f"/queue/{APP}/requests/{(await mine.json())['request_id']}"
    for method, path in (("GET", "/status"), ("GET", "/status/stream"), ("GET", ""), ("PUT", "/cancel")):
        for sent in ({"params": {"fal_jwt_token": token}}, {"headers": {"Authorization": f"Bearer {token}"}}):
            response = await client.request(method, base + path, **sent)
            assert response.status == 401, (method, path, sent, response.status)
            assert (await response.json())["error_type"] == "unauthorized"


@pytest.mark.parametrize("path", ["/ws", f"/run/{APP}/realtime"])
async def test_a_tokens_socket_closes_when_the_token_expires(client: Client, path: str) -> None:
    token = await mint(client, ["demo-flux-2"], token_expiration=1)
    async with client.ws_connect(f"{path}?fal_jwt_token={token}") as ws:
        async with asyncio.timeout(10):
            message = await ws.receive()
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (aiohttp.WSCloseCode.POLICY_VIOLATION, "token expired")


async def test_ws_submits_are_limited_per_message_and_metered_under_the_key(client: Client) -> None:
    """A managed key's /ws submits: one past its rate is the socket's error message (429 rate_limited,
    with retry_after_s) and the socket stays open; a raised limit applies to the open socket at once;
    each accepted submit is a usage row of that key."""
    created = await client.post("/keys", json={"name": "ws-runner", "rate_per_min": 1}, headers=PLAIN)
    secret = (await created.json())["key"]
    log_scan.register(secret)
    async with client.ws_connect("/ws", headers={"Authorization": f"Key {secret}"}) as ws:
        finished = []
        for ref in (1, 2, 3):
            await ws.send_json({"action": "submit", "app_id": APP, "input": {"prompt": "p"}, "ref": ref})
            if ref == 2:
                refused = await next_of(ws, "error")
                assert (refused["status_code"], refused["error_type"], refused["ref"]) == (
                    429,
                    "rate_limited",
                    2,
                )
                assert 1 <= refused["retry_after_s"] <= 60
                raised = await client.patch("/keys/ws-runner", json={"rate_per_min": 100}, headers=PLAIN)
                assert raised.status == 200
                continue
            submitted = await next_of(ws, "submitted")
            finished.append(await next_of(ws, "completed", submitted["request_id"]))
    usage = await (await client.get("/usage?key=ws-runner", headers=PLAIN)).json()
    assert [(r["key"], r["requests"], r["succeeded"]) for r in usage["rows"]] == [("ws-runner", 2, 2)]

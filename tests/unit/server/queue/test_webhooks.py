"""Webhook signing (fal's Ed25519 scheme, checked against our JWKS), payloads, back-off and delivery."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from nacl.signing import VerifyKey

from server.errors import BlockedAddressError, ConfigError
from server.queue.store import Delivery, JobRecord, JobStore, Outcome
from server.queue.webhooks import (
    WebhookSender,
    WebhookSigner,
    backoff_s,
    check_webhook_url,
    verify_signature,
    webhook_payload,
    webhook_policy,
)
from server.security.netpolicy import AddressPolicy, parse_networks
from server.settings import load_settings

LOOPBACK = AddressPolicy(parse_networks("127.0.0.0/8"))


def test_key_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "webhook.key"
    signer = WebhookSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    again = WebhookSigner.load_or_create(path)
    assert (again.public_key, again.kid) == (signer.public_key, signer.kid)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="expected 32 bytes"):
        WebhookSigner.load_or_create(path)


def test_signature_verifies_with_the_jwks_and_fails_when_anything_changes(tmp_path: Path) -> None:
    signer = WebhookSigner.load_or_create(tmp_path / "k")
    jwks = json.loads(json.dumps(signer.jwks()))  # as a receiver downloads it
    body = b'{"request_id": "r1", "status": "OK"}'
    headers = signer.headers(request_id="r1", user_id="u", body=body, timestamp_s=1_700_000_000.9)
    assert headers["X-Fal-Webhook-Timestamp"] == "1700000000"

    # What a receiver following fal's docs computes by hand:
    (key,) = jwks["keys"]
    raw = __import__("base64").urlsafe_b64decode(key["x"] + "==")
    message = f"r1\nu\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    VerifyKey(raw).verify(message, bytes.fromhex(headers["X-Fal-Webhook-Signature"]))

    assert verify_signature(jwks, headers, body, now_s=1_700_000_100)
    assert not verify_signature(jwks, headers, body + b" ", now_s=1_700_000_100)
    assert not verify_signature(jwks, {**headers, "X-Fal-Webhook-User-Id": "v"}, body, now_s=1_700_000_100)
    assert not verify_signature(jwks, headers, body, now_s=1_700_000_000 + 301)  # stale
    other = WebhookSigner.load_or_create(tmp_path / "other").jwks()
    assert not verify_signature(other, headers, body, now_s=1_700_000_100)


def test_a_refused_webhook_names_the_setting_that_allows_it() -> None:
    with pytest.raises(BlockedAddressError, match="allow the network with DARKROOM_WEBHOOK_ALLOW_CIDRS"):
        check_webhook_url("http://127.0.0.1:9/hook", webhook_policy(load_settings({})))
    allowed = webhook_policy(load_settings({"DARKROOM_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8"}))
    assert check_webhook_url("http://127.0.0.1:9/hook", allowed) == "http://127.0.0.1:9/hook"


def test_payloads_match_fals_shape() -> None:
    ok = json.loads(webhook_payload("r", Outcome(200, '{"images": []}')))
    assert ok == {
        "request_id": "r",
        "gateway_request_id": "r",
        "status": "OK",
        "payload": {"images": []},
        "error": None,
    }
    failed = json.loads(webhook_payload("r", Outcome(422, '{"detail": [{"loc": ["body"]}]}')))
    assert failed["status"] == "ERROR" and failed["error"] == "Invalid status code: 422"
    assert failed["payload"] == {"detail": [{"loc": ["body"]}]}


def test_backoff_doubles_and_is_bounded() -> None:
    waits = [backoff_s(n, base_s=10, max_s=1800) for n in range(1, 11)]
    assert waits == [10, 20, 40, 80, 160, 320, 640, 1280, 1800, 1800]
    assert sum(waits[:9]) < 2.5 * 3600  # the default 10 attempts span about two hours, like fal


class Receiver:
    """A loopback webhook endpoint answering the given statuses in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.delivered = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.delivered.set()
        return web.Response(status=status)


@pytest_asyncio.fixture
async def store(new_job_store: Callable[[], JobStore]) -> AsyncIterator[JobStore]:
    store = new_job_store()
    await store.open()
    yield store
    await store.close()


async def serve(receiver: Receiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def sender(
    store: JobStore, signer: WebhookSigner, policy: AddressPolicy = LOOPBACK, **kw: Any
) -> WebhookSender:
    return WebhookSender(store, signer, policy, timeout_s=2.0, backoff_base_s=0.05, backoff_max_s=0.2, **kw)


async def test_delivery_is_retried_signed_and_survives_a_restart(store: JobStore, tmp_path: Path) -> None:
    receiver = Receiver([500])
    server = await serve(receiver)
    signer = WebhookSigner.load_or_create(tmp_path / "k")
    job = JobRecord("r1", "a/b", "a/b", "http://h", {}, webhook_url=str(server.make_url("/hook")))
    first = sender(store, signer)
    delivery = first.delivery(job, Outcome(200, '{"images": []}'))
    assert delivery is not None
    await store.add_delivery(delivery)
    await first.start()
    async with asyncio.timeout(5):
        while not receiver.calls:
            await asyncio.sleep(0.01)
    await first.stop()  # "crash" after the failed attempt: the retry is in the store

    second = sender(store, signer)
    await second.start()
    async with asyncio.timeout(5):  # delivered, then recorded: the store forgets the delivery
        while await store.next_delivery_at() is not None:
            await asyncio.sleep(0.02)
    await second.stop()
    await server.close()
    assert len(receiver.calls) == 2
    for headers, body in receiver.calls:
        assert verify_signature(signer.jwks(), headers, body)
        assert headers["X-Fal-Webhook-Request-Id"] == "r1" and headers["Content-Type"] == "application/json"
    assert json.loads(receiver.calls[1][1])["status"] == "OK"


async def test_gives_up_after_max_attempts(store: JobStore, tmp_path: Path) -> None:
    receiver = Receiver([500, 503, 500])
    server = await serve(receiver)
    webhooks = sender(store, WebhookSigner.load_or_create(tmp_path / "k"), max_attempts=2)
    await store.add_delivery(Delivery("r", "u", str(server.make_url("/hook")), b"{}", next_attempt_at=0.0))
    await webhooks.start()
    async with asyncio.timeout(5):
        while await store.next_delivery_at() is not None:
            await asyncio.sleep(0.02)
    await webhooks.stop()
    await server.close()
    assert len(receiver.calls) == 2


async def test_refused_addresses_are_never_contacted(
    store: JobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver([])
    server = await serve(receiver)
    webhooks = sender(store, WebhookSigner.load_or_create(tmp_path / "k"), policy=AddressPolicy())
    url = f"http://localhost:{server.port}/hook"  # a name resolving to loopback, refused at connect time
    await store.add_delivery(Delivery("r", "u", url, b"{}", next_attempt_at=0.0))
    await webhooks.start()
    async with asyncio.timeout(5):
        while await store.next_delivery_at() is not None:
            await asyncio.sleep(0.02)
    await webhooks.stop()
    await server.close()
    assert receiver.calls == []
    assert "dropped: Refusing to connect to localhost" in caplog.text  # at once, not after retries


async def test_observers_hear_each_attempts_result(store: JobStore, tmp_path: Path) -> None:
    receiver = Receiver([500, 500, 200])
    server = await serve(receiver)
    webhooks = sender(store, WebhookSigner.load_or_create(tmp_path / "k"), max_attempts=2)
    heard: list[str] = []
    webhooks.observers.append(heard.append)
    hook = str(server.make_url("/hook"))
    await store.add_delivery(Delivery("r1", "u", hook, b"{}", next_attempt_at=0.0))
    await webhooks.start()
    async with asyncio.timeout(5):
        while await store.next_delivery_at() is not None:
            await asyncio.sleep(0.02)
    await store.add_delivery(Delivery("r2", "u", hook, b"{}", next_attempt_at=0.0))
    webhooks.notify()
    await asyncio.wait_for(receiver.delivered.wait(), 5)
    await webhooks.stop()
    await server.close()
    assert heard == ["retrying", "gave_up", "delivered"]

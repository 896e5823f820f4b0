"""Webhooks: fal's completion payload, signed with Ed25519 like fal, delivered at least once.

A finished job with a ``fal_webhook`` gets a ``Delivery`` written in the same store transaction as
its outcome; ``WebhookSender`` POSTs it (per-attempt timeout, bounded exponential back-off, a fixed
number of attempts) and survives restarts because the pending deliveries are in the store. Each
attempt is signed afresh: the signed bytes are ``request_id \\n user_id \\n timestamp \\n
sha256_hex(body)`` and the public key is served as a JWKS at ``/.well-known/jwks.json``. Targets
obey the outbound address policy of ``server/security/netpolicy.py`` (``webhook_allow_cidrs``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from server.errors import ConfigError, DarkroomError
from server.queue.store import Delivery, JobRecord, JobStore, Outcome
from server.security import secret_files
from server.security.netpolicy import AddressPolicy, check_url, guarded_session, parse_networks
from server.security.untrusted import parse_url
from server.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_TOLERANCE_S = 300
_BATCH = 50


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes fal signs: request id, user id, unix timestamp and the body's sha256, one per line."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class WebhookSigner:
    """This server's Ed25519 webhook key: signs deliveries and publishes the public half as a JWKS."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.public_key = bytes(key.verify_key)
        thumbprint = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": _b64url(self.public_key)}, separators=(",", ":")
        )
        self.kid = _b64url(hashlib.sha256(thumbprint.encode()).digest())  # RFC 7638

    @classmethod
    def load_or_create(cls, path: Path, *, database_url: str = "") -> WebhookSigner:
        """The key in ``path`` (a raw 32-byte seed, mode 0600), generated on first use (a fleet's: in
        its database)."""
        seed = secret_files.load_or_create(
            path, 32, what="a webhook signing key", on_delete="receivers must then fetch the new JWKS",
            database_url=database_url,
        )  # fmt: skip
        return cls(SigningKey(seed))

    def headers(self, *, request_id: str, user_id: str, body: bytes, timestamp_s: float) -> dict[str, str]:
        """fal's four X-Fal-Webhook-* headers for one attempt."""
        timestamp = str(int(timestamp_s))
        signature = self._key.sign(signed_message(request_id, user_id, timestamp, body)).signature
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": _b64url(self.public_key), "kid": self.kid, "use": "sig"}
            ]
        }


def verify_signature(
    jwks: Mapping[str, Any], headers: Mapping[str, str], body: bytes, *, now_s: float | None = None
) -> bool:
    """What a receiver does: fresh timestamp, and the signature verifies with one of the JWKS keys."""
    try:
        timestamp = headers["X-Fal-Webhook-Timestamp"]
        message = signed_message(
            headers["X-Fal-Webhook-Request-Id"], headers["X-Fal-Webhook-User-Id"], timestamp, body
        )
        signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
        if abs((time.time() if now_s is None else now_s) - int(timestamp)) > SIGNATURE_TOLERANCE_S:
            return False
    except (KeyError, ValueError):
        return False
    for key in jwks.get("keys", []):
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        with contextlib.suppress(BadSignatureError, ValueError):
            VerifyKey(raw).verify(message, signature)
            return True
    return False


def webhook_payload(request_id: str, outcome: Outcome) -> bytes:
    """fal's body: ``{request_id, gateway_request_id, status: OK|ERROR, payload, error}``."""
    payload = json.loads(outcome.body_json) if outcome.body_json else None
    return json.dumps(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK" if outcome.ok else "ERROR",
            "payload": payload,
            "error": None if outcome.ok else f"Invalid status code: {outcome.status_code}",
        }
    ).encode()


def backoff_s(attempts: int, *, base_s: float, max_s: float) -> float:
    """Wait after the given number of failed attempts: base, 2*base, 4*base... capped at max_s."""
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


def webhook_policy(settings: Settings) -> AddressPolicy:
    """The networks webhooks may reach although non-public (``webhook_allow_cidrs``)."""
    try:
        return AddressPolicy(
            parse_networks(settings.webhook_allow_cidrs), setting="DARKROOM_WEBHOOK_ALLOW_CIDRS"
        )
    except ConfigError as e:
        raise ConfigError(f"DARKROOM_WEBHOOK_ALLOW_CIDRS: {e}") from e


def check_webhook_url(url: str, policy: AddressPolicy) -> str:
    """The URL if it may be a webhook target (http(s), no refused literal address); 422 otherwise."""
    check_url(parse_url(url), policy, schemes=("http", "https"))
    return url


class WebhookSender:
    """Delivers pending webhooks from the store until they succeed or run out of attempts."""

    def __init__(
        self, store: JobStore, signer: WebhookSigner, policy: AddressPolicy, *, timeout_s: float = 15.0,
        max_attempts: int = 10, backoff_base_s: float = 10.0, backoff_max_s: float = 1800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.store = store
        self.signer = signer
        # Told each attempt's result: delivered, retrying, gave_up, refused (metrics); must not raise.
        self.observers: list[Callable[[str], None]] = []
        self.policy = policy
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def delivery(self, job: JobRecord, outcome: Outcome) -> Delivery | None:
        """The delivery a finished job owes, or None without a webhook."""
        if not job.webhook_url:
            return None
        body = webhook_payload(job.request_id, outcome)
        return Delivery(job.request_id, job.user_id, job.webhook_url, body, next_attempt_at=self.clock())

    def notify(self) -> None:
        """A delivery was added: look at the store now rather than at the next scheduled time."""
        self._wake.set()

    async def start(self) -> None:
        self._session = guarded_session(self.policy, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._loop_task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop sending. Attempts in flight get `grace_s` to finish and record their outcome; any
        still running then is abandoned, and retried after the next start (its lease runs out)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        in_flight = set(self._attempts)
        if in_flight:
            await asyncio.wait(in_flight, timeout=grace_s)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._dispatch_due()
                next_at = await self.store.next_delivery_at()
            except Exception:
                logger.exception("webhook sender: reading the job store failed; retrying in 5 s")
                next_at = self.clock() + 5.0
            delay_s = 60.0 if next_at is None else min(60.0, max(0.0, next_at - self.clock()))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow stop()'s cancel when
            # the wake-up lands in the same loop turn, and this loop would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _dispatch_due(self) -> None:
        # Leased in the store: one sender of the fleet attempts each; a crash mid-attempt leaves it
        # due again once the attempt would have timed out.
        leased = await self.store.lease_deliveries(self.clock(), lease_s=self.timeout_s + 5.0, limit=_BATCH)
        for delivery in leased:
            task = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery.request_id}")
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._session is not None
        # The request id is the delivery's idempotency key: the same on every attempt, from any host.
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.request_id}
        headers |= self.signer.headers(
            request_id=delivery.request_id, user_id=delivery.user_id, body=delivery.body,
            timestamp_s=self.clock(),
        )  # fmt: skip
        try:
            async with self._session.post(
                delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                failure = None if 200 <= response.status < 300 else f"answered HTTP {response.status}"
        except DarkroomError as e:  # refused by the address policy: retrying cannot help
            logger.error("webhook for %s to %s dropped: %s", delivery.request_id, delivery.url, e.message)
            await self.store.delete_delivery(delivery.id)
            self._tell("refused")
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            failure = f"failed: {type(e).__name__}: {e}"
        except Exception as e:  # a bug or an odd URL must not lose the delivery silently
            logger.exception("webhook for %s to %s: unexpected error", delivery.request_id, delivery.url)
            failure = f"failed: {type(e).__name__}: {e}"
        await self._settle(delivery, failure)

    def _tell(self, result: str) -> None:
        for observer in self.observers:
            observer(result)

    async def _settle(self, delivery: Delivery, failure: str | None) -> None:
        attempts = delivery.attempts + 1
        where = f"webhook for {delivery.request_id} to {delivery.url}"
        if failure is None:
            logger.info("%s delivered (attempt %d)", where, attempts)
            await self.store.delete_delivery(delivery.id)
            self._tell("delivered")
        elif attempts >= self.max_attempts:
            logger.error("%s %s; giving up after %d attempts", where, failure, attempts)
            await self.store.delete_delivery(delivery.id)
            self._tell("gave_up")
        else:
            self._tell("retrying")
            wait_s = backoff_s(attempts, base_s=self.backoff_base_s, max_s=self.backoff_max_s)
            logger.warning("%s %s (attempt %d); retrying in %g s", where, failure, attempts, wait_s)
            await self.store.reschedule_delivery(
                delivery.id, attempts=attempts, next_attempt_at=self.clock() + wait_s
            )
        self.notify()

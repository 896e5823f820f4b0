"""``GET /ws``: live events over a WebSocket, for queue requests and sync runs alike.

Client messages (JSON text frames), each may carry a "ref" that the answer echoes:
- ``{"action": "subscribe", "request_ids": [...]}``: the current state of each at once (the hub's
  snapshot), then its live events until the terminal ``completed``/``failed`` event;
- ``{"action": "unsubscribe", "request_ids": [...]}``;
- ``{"action": "submit", "app_id": "...", "input": {...}, "priority"?: "normal"|"low",
  "webhook_url"?: "..."}``: queue a request; answered ``{"type": "submitted", "request_id", ...}``
  (the submit response's fields), then its events.
Server messages are the hub's events (see ``server/generation/progress.py``), each with "type" and
"request_id", and ``{"type": "error", "detail", "error_type", "status_code"}`` for a refused message.
A submit is admitted under its key's limits (``quotas.admitted``; refused: the error message with 429
``rate_limited`` and ``retry_after_s``, or 402 ``budget_exceeded``) and metered as any queued request.

Credentials (``auth.websocket_grant``): ``Authorization: Key <key>``, or, from a browser, which cannot
set headers on a WebSocket, ``?fal_jwt_token=<token>`` from ``POST /tokens/``. A token limits the
connection to its ``allowed_apps``: submitting to another app is refused (403), and so is subscribing
to a request of another app, of another user than the token's, or to a sync run (whose app the socket
cannot check). The socket is closed (1008) when its token expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from server.api import auth, quotas
from server.api.described import operation
from server.api.queue import submit_job, submitted_body
from server.api.request import base_url, parse_json
from server.api.state import HUB, QUEUE, SETTINGS
from server.api.streams import endless
from server.errors import DarkroomError, ForbiddenError, RequestValidationError
from server.queue.store import DEFAULT_USER_ID
from server.security.tokens import Grant

logger = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 1000


def routes() -> list[web.RouteDef]:
    """``GET /ws``: subscribe to requests' live events, submit over the socket."""
    return [web.get("/ws", websocket)]


class _Session:
    """One client connection: its subscriptions (one forwarding task each) and a send lock."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, grant: Grant) -> None:
        self.request = request
        self.grant = grant
        self.app = request.app
        self.ws = ws
        self.forwarders: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(message))

    async def error(self, ref: Any, status_code: int, detail: Any, error_type: str, **extra: Any) -> None:
        message = {"type": "error", "status_code": status_code, "detail": detail, "error_type": error_type}
        await self.send({**message, **extra, **({"ref": ref} if ref is not None else {})})

    async def handle(self, text: str) -> None:
        try:  # the limits of an HTTP body: UTF-8, strict JSON, nesting, number length
            message = parse_json(text.encode())
        except RequestValidationError as e:
            reason = str(e.errors[0]["msg"]).removeprefix("Body ")
            await self.error(None, 400, f"The message {reason}", "bad_message")
            return
        if not isinstance(message, dict):
            await self.error(None, 400, "Expected a JSON object with an action", "bad_message")
            return
        action, ref = message.get("action"), message.get("ref")
        try:
            if action == "subscribe":
                await self.subscribe(_ids(message), ref)
            elif action == "unsubscribe":
                for request_id in _ids(message):
                    if (task := self.forwarders.pop(request_id, None)) is not None:
                        task.cancel()
            elif action == "submit":
                await self.submit(message, ref)
            else:
                await self.error(
                    ref,
                    400,
                    f"Unknown action {action!r}; expected subscribe, unsubscribe or submit",
                    "bad_message",
                )  # noqa: E501
        except DarkroomError as e:
            after = e.headers.get("Retry-After", "")
            wait = {"retry_after_s": int(after)} if after.isdigit() else {}
            await self.error(ref, e.status, e.detail, e.code, **wait)

    async def handle_safely(self, text: str) -> None:
        """``handle``, and a failure it did not foresee an error frame: the connection stays usable."""
        try:
            await self.handle(text)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("a /ws message failed")
            await self.error(
                None, 500, "The message could not be handled (the server logged why)", "internal_error"
            )

    async def subscribe(self, request_ids: list[str], ref: Any) -> None:
        queue = self.app[QUEUE]
        for request_id in request_ids:
            if request_id in self.forwarders:
                continue
            if not (await queue.ensure_live_state(request_id) or self.app[HUB].known(request_id)):
                await self.error(
                    ref, 404, f"Request {request_id} not found", "not_found", request_id=request_id
                )
                continue
            if (refusal := self._refusal(request_id)) is not None:
                await self.error(ref, refusal.status, refusal.detail, refusal.code, request_id=request_id)
                continue
            if len(self.forwarders) >= MAX_SUBSCRIPTIONS:
                await self.error(
                    ref, 429, f"At most {MAX_SUBSCRIPTIONS} subscriptions per connection", "too_many"
                )
                return
            self.forwarders[request_id] = asyncio.create_task(self._forward(request_id))

    def _refusal(self, request_id: str) -> DarkroomError | None:
        """Why this connection's token may not follow the request, if so: a token follows only queue
        requests of its apps submitted by its own user (the key that minted it)."""
        if self.grant.apps is None:
            return None
        record = self.app[QUEUE].get(request_id)
        if record is None:
            return ForbiddenError(
                f"Request {request_id} is not a queue request: a token may follow only queue requests "
                f"of its apps ({self.grant.describe_apps()})"
            )
        if record.user_id != (self.grant.user_id or DEFAULT_USER_ID):
            return ForbiddenError(f"Request {request_id} was submitted by another user than this token's")
        try:
            auth.require_app(self.grant, record.app_id)
        except DarkroomError as e:
            return e
        return None

    async def submit(self, message: dict[str, Any], ref: Any) -> None:
        app_id = message.get("app_id")
        if not isinstance(app_id, str) or not app_id:
            await self.error(ref, 422, "submit needs an app_id", "validation_error")
            return
        auth.require_app(self.grant, app_id)
        headers = {"X-Fal-Queue-Priority": str(message.get("priority") or "normal")}
        query = {"fal_webhook": str(message["webhook_url"])} if message.get("webhook_url") else {}
        with quotas.admitted(self.app, quotas.socket_caller(self.app, self.grant)):
            record = await submit_job(
                self.app, app_id, message.get("input") or {}, base=base_url(self.request, self.app[SETTINGS]),
                headers=headers, query=query, user_id=self.grant.user_id or DEFAULT_USER_ID,
            )  # fmt: skip
        answer = {"type": "submitted", **submitted_body(self.app, record)}
        await self.send({**answer, **({"ref": ref} if ref is not None else {})})
        await self.subscribe([record.request_id], ref)

    async def _forward(self, request_id: str) -> None:
        subscription = self.app[HUB].subscribe(request_id)
        try:
            async for event in subscription:
                await self.send(event)
        except (ConnectionResetError, RuntimeError):
            pass  # the socket closed under us
        finally:
            subscription.close()
            if self.forwarders.get(request_id) is asyncio.current_task():
                del self.forwarders[request_id]

    async def close(self) -> None:
        tasks = list(self.forwarders.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ids(message: dict[str, Any]) -> list[str]:
    ids = message.get("request_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DarkroomError(
            "request_ids must be a list of request id strings", status=422, code="validation_error"
        )
    return list(ids)


@auth.self_authenticating
@operation(
    summary="Live events of requests over a WebSocket (subscribe, submit)",
    responses={101: "Switching to the WebSocket", 400: "Not a WebSocket handshake"},
    query={"fal_jwt_token": "An app token (browsers cannot send headers)"},
    schemes=("key", "token"),
    tag="events",
)
@endless
async def websocket(request: web.Request) -> web.StreamResponse:
    """The live-events socket; see the module docstring for the protocol."""
    grant = auth.websocket_grant(request)  # before the upgrade: a refusal is a plain 401
    # A message past the body limit closes the socket with 1009 (message too big).
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=request.app[SETTINGS].body_max_bytes)
    await ws.prepare(request)
    session = _Session(request, ws, grant)
    expiry = auth.close_at_expiry(ws, grant)
    try:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await session.handle_safely(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await session.error(None, 400, "Send JSON text frames", "bad_message")
    finally:
        if expiry is not None:
            expiry.cancel()
        await session.close()
    return ws

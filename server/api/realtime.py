"""``WS /run/{app_id}/realtime``: fal's realtime protocol (fal-api.md section 5) over the sync generator.

Credentials as for every WebSocket (``auth.websocket_grant``): ``?fal_jwt_token=`` from
``POST /tokens/`` (its ``allowed_apps`` must name the app), or ``Authorization: Key <key>``; refused
before the upgrade (401/403), as are an unknown app (404) and a ``max_buffering`` outside 1..60 (422).

The client sends binary msgpack frames, one input object each (it may carry a ``request_id``, which the
answer echoes). Each input is validated when it arrives and run like a sync ``/run`` (live events go
to the hub, so ``/ws`` can follow them; file URLs are ours, or data URIs with ``sync_mode``). The
answer is a binary msgpack frame with the output, then a text frame
``{"type": "x-fal-message", "action": "timings", "timing": <s>, "request_id"?}`` as fal's apps send.
A bad input or a failed run is a text frame ``{"type": "x-fal-error", "error": <error type>, "reason":
<message>, "status_code", "detail", "request_id"?}``; the socket stays open.

Buffering, as fal's realtime apps do it: one input runs at a time per connection, and while it runs
at most ``max_buffering`` inputs (default 1) wait; a newer input pushes out the oldest waiting one
(latest wins: a UI that sends an input per keystroke gets the newest prompt next, not a backlog).
Each dropped input is reported as ``{"type": "x-fal-message", "action": "dropped", "request_id"?}``
(fal's SDKs skip x-fal-message frames). Closing the socket cancels the running input.

Each input that runs is metered like a ``/run`` (a usage row for the socket's key) and admitted under
the key's limits when it starts (``quotas.admitted``): one refused (rate, concurrency or budget) gets
the error frame with the 429 or 402 reason, and the socket stays open. An input dropped while waiting
never ran: it is neither metered nor counted against the rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
from aiohttp import web
from pydantic import BaseModel

from server.api import auth, quotas
from server.api.described import operation
from server.api.params import Param
from server.api.request import base_url, within_depth
from server.api.run import counted
from server.api.state import ENDPOINTS, GENERATOR, HUB, QUEUE, SETTINGS
from server.api.streams import endless
from server.errors import DarkroomError, RequestValidationError
from server.generation.live import run_live
from server.queue.store import DEFAULT_USER_ID
from server.security.tokens import Grant
from server.workflows.mapping import Endpoint
from server.workflows.validation import find_endpoint, validate_input

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUFFERING = 1


def routes() -> list[web.RouteDef]:
    """The realtime route (GET, so it does not clash with POST /run/{app_id})."""
    return [web.get("/run/{path:(?s:.+)}/realtime", realtime)]


@dataclass(frozen=True)
class _Input:
    parsed: BaseModel
    client_request_id: str | int | None  # echoed as given (fal's JS client sends a string)


BUFFERING = Param(
    "Inputs that may wait while one runs (1 to 60, default 1)",
    pattern=r"^([1-9]|[1-5][0-9]|60)$", message="a whole number from 1 to 60",
)  # fmt: skip


def max_buffering(query: Mapping[str, str]) -> int:
    """The ``max_buffering`` query value (1..60, default 1), or a 422 saying what is allowed."""
    value = BUFFERING.read("query", "max_buffering", query)
    return DEFAULT_MAX_BUFFERING if value is None else int(value)


def error_frame(error: DarkroomError, client_request_id: Any = None) -> dict[str, Any]:
    """fal's realtime error message for a refused input or a failed run."""
    frame = {
        "type": "x-fal-error", "error": error.code, "reason": error.message, "status_code": error.status,
        "detail": error.detail,
    }  # fmt: skip
    return {**frame, **({"request_id": client_request_id} if client_request_id is not None else {})}


class _Session:
    """One realtime connection: a reader that validates and buffers inputs, a runner that runs them."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, endpoint: Endpoint, buffering: int,
        grant: Grant,
    ) -> None:  # fmt: skip
        self.request, self.ws, self.endpoint, self.grant = request, ws, endpoint, grant
        self.pending: deque[_Input] = deque()
        self.buffering = buffering
        self._ready = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        runner = asyncio.create_task(self._run_inputs())
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    await self._accept(message.data)
                elif message.type is aiohttp.WSMsgType.TEXT:
                    await self._refuse(None, "Send each input as a binary msgpack frame, not text")
        finally:
            runner.cancel()  # the client left: stop its running input
            await asyncio.gather(runner, return_exceptions=True)

    async def _accept(self, data: bytes) -> None:
        try:
            decoded = within_depth(msgpack.unpackb(data, raw=False))
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            await self._refuse(None, f"Frame is not msgpack: {e}")
            return
        except DarkroomError as e:  # nested past the limit of an HTTP body
            await self._refuse(None, e.message)
            return
        if not isinstance(decoded, dict):
            await self._refuse(
                None, f"Expected a msgpack map (one input object), got {type(decoded).__name__}"
            )
            return
        client_request_id = decoded.pop("request_id", None)
        if client_request_id is not None and not isinstance(client_request_id, (str, int)):
            await self._refuse(None, f"request_id must be a string, got {type(client_request_id).__name__}")
            return
        try:
            parsed = validate_input(self.endpoint, decoded)
        except DarkroomError as e:
            await self._send_text(error_frame(e, client_request_id))
            return
        if len(self.pending) >= self.buffering:
            dropped = self.pending.popleft()
            await self._send_text(_message("dropped", dropped.client_request_id))
        self.pending.append(_Input(parsed, client_request_id))
        self._ready.set()

    async def _refuse(self, client_request_id: Any, reason: str) -> None:
        error = RequestValidationError([{"loc": ["body"], "msg": reason, "type": "value_error"}], reason)
        await self._send_text(error_frame(error, client_request_id))

    async def _run_inputs(self) -> None:
        while True:
            if not self.pending:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._run_one(self.pending.popleft())

    async def _run_one(self, item: _Input) -> None:
        app = self.request.app
        generator, user = app[GENERATOR], self.grant.user_id or DEFAULT_USER_ID
        started, request_id = time.perf_counter(), str(uuid.uuid4())
        try:
            with (
                quotas.admitted(app, quotas.socket_caller(app, self.grant)),
                counted(app, user, self.endpoint.app_id, request_id) as ran,
            ):
                output = ran["output"] = await run_live(
                    generator, app[HUB], self.endpoint, item.parsed, request_id=request_id,
                    base_url=base_url(self.request, generator.settings),
                    previews_per_s=generator.settings.previews_per_s, turn=app[QUEUE].sync_turn,
                )  # fmt: skip
        except DarkroomError as e:
            await self._send_text(error_frame(e, item.client_request_id))
            return
        except Exception:  # one failed input must not end the session
            logger.exception("realtime %s: input failed", self.endpoint.app_id)
            internal = DarkroomError("Internal Server Error")
            await self._send_text(error_frame(internal, item.client_request_id))
            return
        if item.client_request_id is not None:
            output = {**output, "request_id": item.client_request_id}
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_bytes(msgpack.packb(output, use_bin_type=True))
        timings = {**_message("timings", item.client_request_id), "timing": time.perf_counter() - started}
        await self._send_text(timings)

    async def _send_text(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(frame))


def _message(action: str, client_request_id: Any) -> dict[str, Any]:
    frame = {"type": "x-fal-message", "action": action}
    return {**frame, **({"request_id": client_request_id} if client_request_id is not None else {})}


@auth.self_authenticating
@operation(
    summary="fal's realtime WebSocket: msgpack inputs in, outputs out",
    responses={
        101: "Switching to the WebSocket",
        400: "Not a WebSocket handshake",
        404: "Unknown app",
        422: "Invalid max_buffering",
    },
    query={"max_buffering": BUFFERING, "fal_jwt_token": "An app token (POST /tokens/)"},
    schemes=("key", "token"),
    tag="realtime",
)
@endless
async def realtime(request: web.Request) -> web.StreamResponse:
    """fal's realtime WebSocket for one app; see the module docstring for the protocol."""
    grant = auth.websocket_grant(request)
    path = request.match_info["path"]
    endpoint = find_endpoint(request.app[ENDPOINTS], path)
    auth.require_app(grant, path)
    buffering = max_buffering(request.query)
    # A frame past the body limit closes the socket with 1009 (message too big).
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=request.app[SETTINGS].body_max_bytes)
    await ws.prepare(request)
    expiry = auth.close_at_expiry(ws, grant)
    try:
        await _Session(request, ws, endpoint, buffering, grant).serve()
    finally:
        if expiry is not None:
            expiry.cancel()
    return ws

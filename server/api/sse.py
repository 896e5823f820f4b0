"""Server-sent events: the response headers and the ``data: <JSON>`` framing fal's SDKs parse."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.api import streams
from server.api.state import SETTINGS
from server.errors import DarkroomError, relative_paths

KEEPALIVE_S = 15.0


async def open_stream(request: web.Request, *, status: int = 200) -> web.StreamResponse:
    """A prepared ``text/event-stream`` response (no caching, no proxy buffering)."""
    response = web.StreamResponse(
        status=status,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.prepare(request)
    request[streams.RESPONSE] = response
    return response


async def send(response: web.StreamResponse, data: Any) -> None:
    """One event whose data is ``data`` as JSON (every event must be valid JSON for fal_client)."""
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")


async def keepalive(response: web.StreamResponse) -> None:
    """A comment line: keeps proxies from closing an idle stream; clients ignore it."""
    await response.write(b": keep-alive\n\n")


async def error_stream(request: web.Request, error: DarkroomError) -> web.StreamResponse:
    """An error as a single event ``{"detail", "error_type"}`` with the error's status code."""
    response = await open_stream(request, status=error.status)
    detail = relative_paths(error.detail, request.app[SETTINGS].folders)
    await send(response, {"detail": detail, "error_type": error.code})
    await response.write_eof()
    return response

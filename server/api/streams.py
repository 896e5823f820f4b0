"""Responses that last as long as their client stays: event streams and WebSockets. The server ends
them when it shuts down (their clients reconnect, to another host of a fleet), instead of waiting
aiohttp's whole shutdown timeout (60 s) for clients that never leave before the queue can drain. An
event stream ends cleanly (its last chunk sent); a WebSocket is closed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

STREAMS = web.AppKey("open_streams", dict[asyncio.Task[Any], web.Request])
RESPONSE = web.RequestKey("stream_response", web.StreamResponse)  # the event stream's, once prepared
_ENDED = web.RequestKey("stream_ended", bool)  # shutdown ended it


def endless(handler: Handler) -> Handler:
    """Mark a handler whose response lasts until its client leaves: ended at shutdown."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        streams = request.app[STREAMS]
        streams[task] = request
        try:
            return await handler(request)
        except asyncio.CancelledError:
            response = request.get(RESPONSE)  # an event stream's (a WebSocket closes as it is)
            if not request.get(_ENDED) or not isinstance(response, web.StreamResponse):
                raise  # the client left, or it is a WebSocket
            with contextlib.suppress(Exception):
                await response.write_eof()
            return response
        finally:
            streams.pop(task, None)

    return run


async def end_streams(app: web.Application) -> None:
    """``on_shutdown``: end every open stream."""
    open_streams: dict[asyncio.Task[Any], web.Request] = app[STREAMS]
    for task, request in list(open_streams.items()):
        request[_ENDED] = True
        task.cancel()

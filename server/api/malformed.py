"""Requests aiohttp's parser refuses before any route sees them (a control character in a header, an
obs-fold, a bad request line, a line past the limit), answered in darkroom's error envelope.

aiohttp answers these itself, as ``text/plain`` quoting the offending bytes (an ``Authorization`` value
with them), and logs a traceback that quotes them again. ``Runner`` is aiohttp's ``AppRunner`` whose
connections answer ``{"detail": ..., "error_type": "malformed_request"}`` instead, saying what is wrong
but never the bytes, and log one line without them. aiohttp has no setting for this: the runner swaps
in a ``RequestHandler`` subclass through its server (covered by tests/facade/test_hostile_input.py, so an
aiohttp upgrade that moves these internals fails there).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from server.api.access_log import PollQuietAccessLogger

logger = logging.getLogger(__name__)
ERROR_CODE = "malformed_request"
# The words of aiohttp's message before it quotes anything ("Invalid header value char:\n\n  b'...'").
_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9 ,()-]*")


class _EnvelopedErrors(RequestHandler):
    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        if status == 500:  # a handler's own failure: app.py's middleware answered those already
            return super().handle_error(request, status, exc, message)
        found = _WORDS.match(str(getattr(exc, "message", "") or message or ""))
        what = found[0].strip() if found else "unreadable request"
        logger.info("refused a malformed HTTP request from %s: %d %s", request.remote, status, what)
        body = {"detail": f"Malformed HTTP request: {what}. Send valid HTTP/1.1.", "error_type": ERROR_CODE}
        response = web.Response(
            status=status, text=json.dumps(body), content_type="application/json",
            headers={"x-fal-error-type": ERROR_CODE},
        )  # fmt: skip
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopedErrors(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests in darkroom's envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = dict(server._kwargs)
        return _Server(
            server.request_handler, request_factory=server.request_factory, loop=server._loop, **kwargs
        )


def runner(app: web.Application, *, keepalive_timeout_s: float) -> Runner:
    """How ``darkroom serve`` runs the app: malformed requests enveloped, the access log as
    ``access_log`` writes it (to the ``darkroom.access`` logger)."""
    return Runner(
        app, handle_signals=False, access_log=logging.getLogger("darkroom.access"),
        access_log_class=PollQuietAccessLogger, keepalive_timeout=keepalive_timeout_s,
    )  # fmt: skip

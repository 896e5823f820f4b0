"""The access log: aiohttp's line, without the successful status polls and without credentials.

SDKs poll a request's status ten times a second, and formatting those lines cost a third of a status
answer: successful polls show only with the access logger at DEBUG. Query parameters whose name looks
like a credential (``key``, ``token``, ``fal_jwt_token``, ``auth``, ``secret``, ...) show as ``***`` in the
request line and the Referer, whether darkroom expects them there or not (a key pasted into a URL is
refused, and must not be kept either). The request line is logged as sent (%-encoded), so it holds no
control character.
"""

from __future__ import annotations

import logging
import urllib.parse

from aiohttp import web
from aiohttp.web_log import AccessLogger, KeyMethod

# Query parameters whose values the access log shows as *** (a browser's app token, a key sent where it
# does not belong): any name holding one of these words.
_SECRET_WORDS = ("key", "token", "auth", "secret", "passw", "signature", "jwt", "session", "cred")


class PollQuietAccessLogger(AccessLogger):
    """aiohttp's access log without the successful polls and the credentials (see the module docstring).
    Set the access logger to DEBUG to see the polls."""

    def __init__(self, logger: logging.Logger, log_format: str = AccessLogger.LOG_FORMAT) -> None:
        super().__init__(logger, log_format)
        # The request line (%r) and the Referer as sent (%-encoded: no control character), without the
        # credentials a query may carry. Not in compile_format: aiohttp caches compiled formats for every
        # AccessLogger by format string.
        self._methods = [
            KeyMethod(m.key, _redacted_request_line)
            if m.key == "first_request_line"
            else KeyMethod(m.key, _redacted_referer)
            if m.key == ("request_header", "Referer")
            else m
            for m in self._methods
        ]

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if (
            request.method == "GET"
            and response.status < 400
            and (request.path.endswith("/status") or request.path in ("/health", "/ready"))
            and not self.logger.isEnabledFor(logging.DEBUG)
        ):
            return
        super().log(request, response, time)


def _redacted_request_line(request: web.BaseRequest, response: web.StreamResponse, time: float) -> str:
    return (
        f"{request.method} {redacted(request.raw_path)} HTTP/{request.version.major}.{request.version.minor}"
    )


def _redacted_referer(request: web.BaseRequest, response: web.StreamResponse, time: float) -> str:
    return redacted(request.headers.get("Referer", "-"))


def redacted(target: str) -> str:
    """A URL or request target with the values of key- and token-like query parameters as ***."""
    path, mark, query = target.partition("?")
    pairs = (pair.partition("=") for pair in query.split("&")) if mark else ()
    shown = [f"{name}=***" if eq and _secret(name) else f"{name}{eq}{value}" for name, eq, value in pairs]
    return f"{path}?{'&'.join(shown)}" if mark else path


def _secret(name: str) -> bool:
    return any(word in urllib.parse.unquote(name).lower() for word in _SECRET_WORDS)

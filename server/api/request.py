"""Reading what every route reads: the body (within its size and time limits), as strict JSON, fal's
X-Fal-Request-Timeout, and the base URL the client reached us at.

A body streams in under two limits: ``body_max_bytes`` in all (413), and at least ``MIN_WINDOW_BYTES`` in
every ``client_timeout_s`` (408: a slow-loris client holds a connection for a while, never a worker).
JSON is strict: UTF-8, no NaN or Infinity (Python's json takes them; JSON does not), no number that
overflows a float, and at most ``MAX_JSON_DEPTH`` levels of nesting, so nothing downstream recurses
without end.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from server.api.params import POSITIVE_SECONDS, Param
from server.api.state import SETTINGS
from server.errors import DarkroomError, RequestValidationError
from server.settings import Settings

M = TypeVar("M", bound=BaseModel)
MAX_JSON_DEPTH = 64
MIN_WINDOW_BYTES = 64 * 1024  # per client_timeout_s: 1 KiB/s at the default 60 s


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body ({} when there is none), a 422 saying why it is not strict JSON, a 413 past
    ``body_max_bytes``, a 408 if the client stops sending it."""
    if not request.can_read_body:
        return {}
    settings = request.app[SETTINGS]
    body = bytearray()
    async for chunk in body_chunks(request, settings):
        body += chunk
        if len(body) > settings.body_max_bytes:
            raise DarkroomError(
                f"The request body is larger than {settings.body_max_bytes} bytes (DARKROOM_BODY_MAX_BYTES); "
                "send big files as uploads (the /storage API) and name them by URL.",
                status=413, code="body_too_large",
            )  # fmt: skip
    return parse_json(bytes(body)) if body else {}


async def body_chunks(request: web.Request, settings: Settings) -> AsyncIterator[bytes]:
    """The body as it arrives; 408 when a ``client_timeout_s`` window brings less than
    ``MIN_WINDOW_BYTES`` (a client dripping a byte a second is as stuck as one sending nothing)."""
    loop = asyncio.get_running_loop()
    window_ends, window_bytes = loop.time() + settings.client_timeout_s, 0
    while True:
        try:
            async with asyncio.timeout_at(window_ends):
                chunk = await request.content.readany()
        except TimeoutError:
            if window_bytes < MIN_WINDOW_BYTES:
                raise DarkroomError(
                    f"The request body is arriving too slowly: {window_bytes} bytes in the last "
                    f"{settings.client_timeout_s:g} s, at least {MIN_WINDOW_BYTES} needed "
                    "(DARKROOM_CLIENT_TIMEOUT_S).",
                    status=408, code="request_timeout", headers={"Connection": "close"},
                ) from None  # fmt: skip
            window_ends, window_bytes = loop.time() + settings.client_timeout_s, 0
            continue
        if not chunk:
            return
        window_bytes += len(chunk)
        yield chunk


async def read_model(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as ``model`` (strictly typed: see its config); a 422 naming each problem."""
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as e:
        raise RequestValidationError.from_pydantic(e) from e


def parse_json(body: bytes) -> Any:
    """Strict JSON from bytes, or a 422 saying what is wrong with it."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError as e:
        raise _invalid(f"Body is not UTF-8 text, so not JSON: {e}") from e
    except json.JSONDecodeError as e:
        raise _invalid(f"Body is not valid JSON: {e}") from e
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:  # from the hooks below, or an integer past Python's digit limit
        raise _invalid(f"Body is not valid JSON: {e}") from e
    return within_depth(value)


def within_depth(value: Any) -> Any:
    """``value`` if its arrays and objects (lists and dicts) nest at most ``MAX_JSON_DEPTH`` levels; a 422
    otherwise (for decoded bodies other than JSON: the realtime socket's msgpack)."""
    if _depth(value) > MAX_JSON_DEPTH:
        raise _too_deep()
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of a number's range")
    return value


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep() -> RequestValidationError:
    return _invalid(f"Body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects")


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ["body"], "msg": message, "type": "json_invalid"}])


def own_origins(request: web.Request, settings: Settings) -> set[str]:
    """The origins darkroom's own pages are served from (as reached, and ``public_url``)."""
    return {f"{request.scheme}://{request.host}", base_url(request, settings)}


def base_url(request: web.Request, settings: Settings) -> str:
    return settings.public_url.rstrip("/") if settings.public_url else f"{request.scheme}://{request.host}"


REQUEST_TIMEOUT = Param(
    "Seconds the request may wait for a worker before it starts (else 504)",
    pattern=POSITIVE_SECONDS, message="a number of seconds greater than 0 (digits and a decimal point)",
)  # fmt: skip


def request_timeout_s(headers: Mapping[str, str]) -> float | None:
    """``X-Fal-Request-Timeout``: the seconds a request may wait to start, or None; 422 if it is not a
    number of seconds greater than 0."""
    value = REQUEST_TIMEOUT.read("header", "X-Fal-Request-Timeout", headers)
    return None if value is None else float(value)

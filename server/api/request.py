"""Reading what every route reads: the JSON body, and the base URL the client reached us at."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.errors import RequestValidationError
from server.settings import Settings


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body ({} when there is none), or a 422 if it is not UTF-8 JSON."""
    try:
        return await request.json() if request.can_read_body else {}
    except UnicodeDecodeError as e:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"Body is not UTF-8 text, so not JSON: {e}", "type": "json_invalid"}]
        ) from e
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"Body is not valid JSON: {e}", "type": "json_invalid"}]
        ) from e


def own_origins(request: web.Request, settings: Settings) -> set[str]:
    """The origins darkroom's own pages are served from (as reached, and ``public_url``)."""
    return {f"{request.scheme}://{request.host}", base_url(request, settings)}


def base_url(request: web.Request, settings: Settings) -> str:
    return settings.public_url.rstrip("/") if settings.public_url else f"{request.scheme}://{request.host}"

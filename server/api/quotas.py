"""Per-key limits at the edge (``server.queue.limits``): a request that spends worker time (a sync
run, a stream, a queue submit) by a key with limits is admitted or refused (429 with Retry-After, or
402 past the monthly budget) before its handler runs. Keys without limits pay one dict lookup."""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web
from aiohttp.typedefs import Handler

from server.api.state import CALLER, LIMITER, METER, QUEUE
from server.queue.store import DEFAULT_USER_ID
from server.security.roles import Limits

SPENDING = frozenset({"/run/{path}", "/run/{path}/stream", "/queue/{path}"})
_NO_LIMITS = Limits()
_running: Counter[str] = Counter()  # sync runs in flight per user id, this process


@web.middleware
async def quota_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    caller = request.get(CALLER)
    resource = request.match_info.route.resource
    if (
        caller is None or caller.limits == _NO_LIMITS or request.method != "POST"
        or resource is None or resource.canonical not in SPENDING
    ):  # fmt: skip
        return await handler(request)
    user = caller.user_id or DEFAULT_USER_ID
    in_flight = request.app[QUEUE].unfinished(user) + _running[user]
    request.app[LIMITER].admit(
        caller, now=time.time(), in_flight=in_flight, month_gpu_s=request.app[METER].month_gpu_s(user)
    )
    _running[user] += 1
    try:
        return await handler(request)
    finally:
        _running[user] -= 1

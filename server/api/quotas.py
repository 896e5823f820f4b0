"""Per-key limits at the edge (``server.queue.limits``): a request that spends worker time (a sync
run, a stream, a queue submit) by a key with limits is admitted or refused (429 with Retry-After, or
402 past a monthly budget) before its handler runs. Keys without limits pay one dict lookup.

WebSockets spend worker time per message: each ``/ws`` submit and each realtime input is admitted the
same way (``admitted``), under the limits its key has at that moment (``socket_caller``: a limit raised
or lowered applies to an open socket at once), and a refused one gets the socket's error frame."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from server.api.state import CALLER, KEYS, LIMITER, METER, QUEUE
from server.queue.store import DEFAULT_USER_ID
from server.security.roles import Caller, Limits
from server.security.tokens import Grant

SPENDING = frozenset({"/run/{path}", "/run/{path}/stream", "/queue/{path}"})
_NO_LIMITS = Limits()
_running: Counter[str] = Counter()  # sync runs (and socket inputs) in flight per user id, this process


@web.middleware
async def quota_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    if request.method != "POST" or resource is None or resource.canonical not in SPENDING:
        return await handler(request)
    with admitted(request.app, request.get(CALLER)):
        return await handler(request)


@contextlib.contextmanager
def admitted(app: web.Application, caller: Caller | None) -> Iterator[None]:
    """Admit one request of ``caller`` (LimitError or BudgetError when refused) and count it as running
    until the block ends."""
    if caller is None or caller.limits == _NO_LIMITS:
        yield
        return
    user = caller.user_id or DEFAULT_USER_ID
    meter = app[METER]
    app[LIMITER].admit(
        caller, now=time.time(), in_flight=app[QUEUE].unfinished(user) + _running[user],
        month_gpu_s=meter.month_gpu_s(user), month_usd=meter.month_usd(user),
    )  # fmt: skip
    _running[user] += 1
    try:
        yield
    finally:
        _running[user] -= 1


def socket_caller(app: web.Application, grant: Grant) -> Caller | None:
    """The managed key a socket's credentials stand for (an app token minted by it too), as it is now;
    None for a configured key or open access (no limits)."""
    return app[KEYS].named(grant.user_id) if grant.user_id else None

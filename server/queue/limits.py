"""Per-key limits on what spends worker time (``server.security.roles.Limits``): requests per minute
(a sliding 60 s window), requests queued or running at once, and per calendar month (UTC) GPU-seconds
and their cost in USD (each usage row priced when written, ``server.queue.prices``).

Rate and concurrency refusals are 429 with ``Retry-After`` (fal's clients wait and try again); an
exhausted budget is 402 ``budget_exceeded`` (not 429: waiting minutes does not help, and a client that
retries 429s would retry for the rest of the month), until an admin raises the budget or the month ends;
its message names the budget (GPU-seconds or USD). The same checks admit each message of a WebSocket
(``/ws`` submits, realtime inputs), refused with the socket's error frame.

In a fleet: the rate window is each host's own (a client spreading its requests over N hosts gets at
most N times its rate); queued requests are counted from the fleet's shared index, so within the time a
job's notification takes; budgets from the usage rows every host writes, so within
``meter.TOTALS_REFRESH_S`` plus a flush (about 6 s).
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime

from server.errors import DarkroomError
from server.security.roles import Caller

WINDOW_S = 60.0


class LimitError(DarkroomError):
    """A key over its rate or concurrency (429, with Retry-After)."""

    status = 429
    code = "rate_limited"


class BudgetError(DarkroomError):
    """A key past its monthly budget (402)."""

    status = 402
    code = "budget_exceeded"


def next_month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


class Limiter:
    """This host's view of each key's recent requests, and the checks that admit or refuse one."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}

    def admit(
        self, caller: Caller, *, now: float, in_flight: int, month_gpu_s: float, month_usd: float = 0.0
    ) -> None:
        """Admit one request of ``caller`` (counting it in the rate window) or raise ``LimitError`` or
        ``BudgetError`` saying which limit, its value, and when to try again."""
        limits = caller.limits
        over = None
        if limits.monthly_gpu_s is not None and month_gpu_s >= limits.monthly_gpu_s:
            over = f"{month_gpu_s:.1f} of its {limits.monthly_gpu_s:g} GPU-seconds budget (monthly_gpu_s)"
        elif limits.monthly_usd is not None and month_usd >= limits.monthly_usd:
            over = f"${month_usd:.2f} of its ${limits.monthly_usd:g} cost budget (monthly_usd)"
        if over is not None:
            raise BudgetError(
                f"The key '{caller.name}' used {over} this month (UTC); an admin can raise it "
                "(PATCH /keys/{name} or 'darkroom keys limits').",
                headers={"Retry-After": str(math.ceil(next_month_start(now) - now))},
            )
        if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
            raise LimitError(
                f"The key '{caller.name}' has {in_flight} requests queued or running, its limit is "
                f"{limits.max_concurrent}: wait for one to finish.",
                headers={"Retry-After": "1"},
            )
        if limits.rate_per_min is None:
            return
        recent = self._recent.setdefault(caller.name, deque())
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        if len(recent) >= limits.rate_per_min:
            wait_s = max(1, math.ceil(recent[0] + WINDOW_S - now))
            raise LimitError(
                f"The key '{caller.name}' may send {limits.rate_per_min} requests a minute; try again in "
                f"{wait_s} s.",
                headers={"Retry-After": str(wait_s)},
            )
        recent.append(now)

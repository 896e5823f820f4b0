"""``GET /usage`` (and its page, ``/dashboard/usage``): the metered usage (``server.queue.meter``)
summed per key, endpoint and/or day over a time range, as JSON or CSV (``format=csv``, the same rows
and columns). Admins see every key's (or one ``key``'s); other keys see only their own. Cost is the
sum of the rows' stored costs: each row's GPU-seconds priced, when its host wrote it, at that host's
``DARKROOM_GPU_HOURLY_USD`` for the worker that ran it (``server.queue.prices``); measured worker time
only, never idle time. A row written before costs were stored is priced here, by device kind at this
host's prices. The page sets it next to fal's list prices (``fal_prices.json``, dated).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from server.api import page_nav
from server.api.auth import caller_of, page_access, self_authenticating
from server.api.described import operation
from server.api.params import Param
from server.api.state import ACCOUNTS, METER, SETTINGS
from server.errors import ForbiddenError, InputError
from server.queue.accounts import UsageRow
from server.queue.meter import month_start
from server.queue.prices import HourlyPrices
from server.queue.store import DEFAULT_USER_ID
from server.security.roles import Role

_PAGE = (Path(__file__).parent / "pages" / "usage.html").read_text()
# fal's list prices (server/api/fal_prices.json: dated, each with its source), app id -> price
FAL_PRICES: dict[str, Any] = json.loads((Path(__file__).parent / "fal_prices.json").read_text())["prices"]
SUMS = ("gpu_s", "queue_s", "megapixels", "video_s", "training_steps")
COLUMNS = ("requests", "succeeded", "failed", *SUMS, "cost_usd")
_TIME = Param(
    "A time: unix seconds, an ISO 8601 date or date-time (UTC unless it says)",
    pattern=r"^[0-9T:.+\-Z ]{1,40}$",
    message="unix seconds or an ISO 8601 date/date-time",
)
_GROUP = Param(
    "key, endpoint, day, or several joined by commas (default key)",
    pattern=r"^(key|endpoint|day)(,(key|endpoint|day)){0,2}$",
    message="key, endpoint or day, or several joined by commas",
)
_FORMAT = Param("json (default) or csv", enum=("json", "csv"))


def summarize(
    rows: Iterable[UsageRow], group_by: tuple[str, ...], prices: HourlyPrices
) -> list[dict[str, Any]]:
    """The rows summed per group (sorted by group), each with its cost (as stored; ``prices`` for rows
    stored without one)."""
    totals: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        values = {"key": row.key_name, "endpoint": row.app_id, "day": _day(row.finished_at)}
        group = tuple(values[g] for g in group_by)
        empty = {**dict(zip(group_by, group, strict=True)), **dict.fromkeys(COLUMNS, 0)}
        entry = totals.setdefault(group, empty)
        entry["requests"] += 1
        entry["succeeded" if row.status == 200 else "failed"] += 1
        for name in SUMS:
            entry[name] += getattr(row, name)
        stored = row.cost_usd
        entry["cost_usd"] += stored if stored is not None else prices.cost_usd(row.gpu_s, row.device)
    return [_rounded(totals[group]) for group in sorted(totals)]


def _rounded(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def parse_time(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise InputError(f"Invalid time {text!r}: give unix seconds or an ISO 8601 date/date-time") from e
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def routes() -> list[web.RouteDef]:
    return [web.get("/usage", usage), web.get("/dashboard/usage", page)]


@operation(
    summary="Usage per key, endpoint and/or day, with its cost (admins: every key; others: their own)",
    query={
        "from": _TIME, "to": _TIME, "group_by": _GROUP, "format": _FORMAT,
        "key": "One key's usage (admins; others may name only their own)",
    },
    responses={
        200: "The usage rows (JSON; CSV with format=csv)",
        403: "Another key's usage, asked by a key that is not an admin",
        422: "A time that is neither unix seconds nor ISO 8601",
    },
    ok=["application/json", "text/csv"],
    refusals={422: (InputError.code,)},  # the times' form: no schema of a query string says it
    tag="usage",
)  # fmt: skip
async def usage(request: web.Request) -> web.Response:
    query, now = request.query, time.time()
    since = parse_time(_TIME.read("query", "from", query), month_start(now))
    until = parse_time(_TIME.read("query", "to", query), now + 1.0)
    group_by = tuple(dict.fromkeys((_GROUP.read("query", "group_by", query) or "key").split(",")))
    as_csv = _FORMAT.read("query", "format", query) == "csv"
    caller = caller_of(request)
    own = caller.user_id or DEFAULT_USER_ID
    key = query.get("key") or (None if caller.may(Role.ADMIN) else own)
    if key != own and not caller.may(Role.ADMIN):
        raise ForbiddenError(f"Only admins see other keys' usage; this key ({caller.name}) sees its own.")
    await request.app[METER].flush()  # what this host metered so far is in the answer
    rows = await request.app[ACCOUNTS].usage(since, until, key)
    prices = HourlyPrices.parse(request.app[SETTINGS].gpu_hourly_usd)
    summary = summarize(rows, group_by, prices)
    if as_csv:
        return web.Response(text=to_csv(summary, group_by), content_type="text/csv")
    return web.json_response(
        {
            "from": since, "to": until, "group_by": list(group_by), "key": key, "role": caller.role.value,
            "gpu_hourly_usd": prices.entries, "fal_prices": FAL_PRICES, "rows": summary,
        }
    )  # fmt: skip


@self_authenticating
@operation(
    summary="The usage page: a plot per day, cost per endpoint next to fal's list price, per key",
    ok="text/html",
    responses={200: "The page", 303: "Not signed in: the sign-in page"},
    schemes=("session", "key"),
    tag="pages",
)
async def page(request: web.Request) -> web.Response:
    page_access(request, page="/dashboard/usage")
    return page_nav.page(request, _PAGE)


def to_csv(summary: list[dict[str, Any]], group_by: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*group_by, *COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary)
    return out.getvalue()

"""The limiter's arithmetic: a sliding minute, Retry-After from the oldest request, the next month; the
cost budget at per-device prices; and two hosts on one real PostgreSQL refusing an over-budget key
within the documented tolerance (usage rows flushed, totals read again)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from server.queue import meter
from server.queue.accounts import Accounts, MonthTotal
from server.queue.limits import BudgetError, Limiter, LimitError, next_month_start
from server.queue.postgres_store import PostgresJobStore
from server.queue.prices import HourlyPrices
from server.security.roles import Caller, Limits, Role
from tests.postgres import PostgresServer


def test_the_window_slides_and_retry_after_names_when_a_slot_frees() -> None:
    limiter, caller = Limiter(), Caller("k", Role.RUNNER, limits=Limits(rate_per_min=2))
    limiter.admit(caller, now=100.0, in_flight=0, month_gpu_s=0)
    limiter.admit(caller, now=130.0, in_flight=0, month_gpu_s=0)
    with pytest.raises(LimitError) as refused:
        limiter.admit(caller, now=145.0, in_flight=0, month_gpu_s=0)
    assert refused.value.headers["Retry-After"] == "15" and refused.value.status == 429
    limiter.admit(caller, now=160.5, in_flight=0, month_gpu_s=0)  # the one at 100 s left the window
    with pytest.raises(LimitError):
        limiter.admit(caller, now=161.0, in_flight=0, month_gpu_s=0)


def test_concurrency_and_budget() -> None:
    limiter = Limiter()
    caller = Caller("k", Role.RUNNER, limits=Limits(max_concurrent=2, monthly_gpu_s=10.0))
    limiter.admit(caller, now=0.0, in_flight=1, month_gpu_s=9.9)
    with pytest.raises(LimitError):
        limiter.admit(caller, now=0.0, in_flight=2, month_gpu_s=0)
    with pytest.raises(BudgetError) as spent:
        limiter.admit(caller, now=0.0, in_flight=0, month_gpu_s=10.0)
    assert spent.value.status == 402 and spent.value.code == "budget_exceeded"


def test_next_month_start_in_utc() -> None:
    december = datetime(2026, 12, 7, 23, 59, tzinfo=UTC).timestamp()
    assert next_month_start(december) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert (
        next_month_start(datetime(2026, 3, 31, tzinfo=UTC).timestamp())
        == datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    )


async def test_the_cost_budget_prices_each_device_kind_and_names_itself() -> None:
    class NoStore:  # month totals from this host only: nothing stored yet
        async def month_totals(self, since: float) -> dict[str, list[MonthTotal]]:
            return {}

    devices = iter(["cuda", "cpu", "cuda"])
    metered = meter.Meter(
        NoStore(), device=lambda: next(devices), prices=HourlyPrices.parse("cuda=3.6,cpu=0")
    )  # type: ignore[arg-type]
    for run_s in (50.0, 1000.0, 40.0):
        metered.record("team", "darkroom/demo-flux-2", 200, run_s=run_s)
    assert metered.month_gpu_s("team") == pytest.approx(1090.0)
    assert metered.month_usd("team") == pytest.approx(0.09)  # 90 s of cuda at $3.6/h; cpu is free
    caller = Caller("team", Role.RUNNER, limits=Limits(monthly_usd=0.09))
    with pytest.raises(BudgetError) as spent:
        Limiter().admit(caller, now=0.0, in_flight=0, month_gpu_s=1090.0, month_usd=metered.month_usd("team"))
    assert "$0.09 of its $0.09 cost budget (monthly_usd)" in spent.value.message


async def test_two_hosts_sharing_usage_rows_refuse_over_budget_within_the_tolerance(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host A meters a key past its budgets; host B, which ran none of it, refuses the key within
    FLUSH_EVERY_S + TOTALS_REFRESH_S (scaled down here: the same loop, shorter waits)."""
    monkeypatch.setattr(meter, "FLUSH_EVERY_S", 0.05)
    monkeypatch.setattr(meter, "TOTALS_REFRESH_S", 0.2)
    url = postgres_server.database()
    stores = [PostgresJobStore(url), PostgresJobStore(url)]
    for store in stores:
        await store.open()
    prices = HourlyPrices.parse("cuda=3.6")  # $0.001 a second
    host_a, host_b = (meter.Meter(Accounts(s), device=lambda: "cuda", prices=prices) for s in stores)
    loops = [asyncio.create_task(m.run()) for m in (host_a, host_b)]
    limiter = Limiter()
    budgets = {
        "seconds": Caller("by-seconds", Role.RUNNER, limits=Limits(monthly_gpu_s=100.0)),
        "usd": Caller("by-usd", Role.RUNNER, limits=Limits(monthly_usd=0.1)),
    }

    def admit_on_b(caller: Caller) -> None:
        limiter.admit(
            caller, now=time.time(), in_flight=0, month_gpu_s=host_b.month_gpu_s(caller.name),
            month_usd=host_b.month_usd(caller.name),
        )  # fmt: skip

    try:
        for caller in budgets.values():
            admit_on_b(caller)  # nothing used yet
            host_a.record(caller.name, "darkroom/demo-flux-2", 200, run_s=60.0)
            host_a.record(caller.name, "darkroom/demo-flux-2", 200, run_s=45.0)  # 105 s, $0.105
        metered_at = time.monotonic()
        tolerance_s = meter.FLUSH_EVERY_S + meter.TOTALS_REFRESH_S
        for what, caller in budgets.items():
            async with asyncio.timeout(10):
                while True:
                    try:
                        admit_on_b(caller)
                    except BudgetError as e:
                        assert ("monthly_usd" if what == "usd" else "monthly_gpu_s") in e.message
                        break
                    await asyncio.sleep(0.01)
        waited_s = time.monotonic() - metered_at
        assert waited_s <= tolerance_s + 0.3, f"host B refused {waited_s:.2f} s after host A metered"
        assert host_b.month_gpu_s("by-seconds") == pytest.approx(105.0)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for store in stores:
            await store.close()

"""The limiter's arithmetic: a sliding minute, Retry-After from the oldest request, the next month."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.queue.limits import BudgetError, Limiter, LimitError, next_month_start
from server.security.roles import Caller, Limits, Role


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

"""Worker choice: warm model first, then an empty worker, then the least recently used; waiters stay FIFO.

Placement is a pure function; the supervisor's borrowing is driven over ready worker slots (it reads
only their fields), as in test_worker.py. The spread over real ComfyUI workers is tests/e2e/test_spread.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from server.engine.placement import pick_idle
from server.engine.supervisor import Supervisor
from server.settings import load_settings


@dataclass
class Slot:
    id: int
    warm_key: str | None = None
    idle_since_s: float = 0.0
    ready: bool = True
    busy: bool = False

    def __post_init__(self) -> None:
        self.client = SimpleNamespace(stuck_prompt=None)  # no prompt outlived its interrupt


def test_a_warm_worker_wins_even_over_one_idle_longer() -> None:
    idle = [Slot(0, "b", 1.0), Slot(1, "a", 5.0), Slot(2, None, 0.0)]
    assert pick_idle(idle, "a").id == 1


def test_a_cold_request_takes_an_empty_worker_before_evicting_a_warm_one() -> None:
    idle = [Slot(0, "a", 1.0), Slot(1, None, 9.0), Slot(2, "b", 2.0)]
    assert pick_idle(idle, "c").id == 1
    assert pick_idle(idle, None).id == 1


def test_else_the_least_recently_used_is_evicted() -> None:
    idle = [Slot(0, "a", 3.0), Slot(1, "b", 1.0), Slot(2, "c", 2.0)]
    assert pick_idle(idle, "d").id == 1


def test_among_warm_workers_the_one_idle_longest_goes_first() -> None:
    idle = [Slot(0, "a", 3.0), Slot(1, "a", 1.0)]
    assert pick_idle(idle, "a").id == 1


def test_no_idle_worker_is_none() -> None:
    assert pick_idle([], "a") is None


def supervisor_over(tmp_path: Path, *slots: Slot) -> Supervisor:
    supervisor = Supervisor(load_settings({}, data_dir=str(tmp_path)), tmp_path)
    supervisor.workers = slots  # type: ignore[assignment]
    return supervisor


async def test_a_borrowed_worker_counts_as_warm_and_the_host_reports_it(tmp_path: Path) -> None:
    supervisor = supervisor_over(tmp_path, Slot(0), Slot(1), Slot(2, ready=False))
    assert (supervisor.idle_workers, supervisor.warm_keys()) == (2, set())
    async with supervisor.worker(model_key="a") as w:
        assert (w.id, w.warm_key) == (0, "a")
        assert (supervisor.idle_workers, supervisor.warm_keys(), supervisor.warm_keys(idle_only=True)) == (
            1,
            {"a"},
            set(),
        )
    async with supervisor.worker(model_key="b") as w:
        assert w.id == 1  # the empty worker, not worker 0 that has "a" loaded
    async with supervisor.worker(model_key="a") as w:
        assert w.id == 0
    async with supervisor.worker() as w:  # unknown models (an editor prompt): the LRU worker, now unknown
        assert w.id == 1
    assert supervisor.warm_keys(idle_only=True) == {"a"}


async def test_a_warm_worker_never_lets_a_later_request_overtake(tmp_path: Path) -> None:
    """Both workers busy; a cold request waits first, then a request warm for the worker that frees up
    arrives: the earlier (cold) one gets it, the warm one takes the next."""
    supervisor = supervisor_over(tmp_path, Slot(0), Slot(1))
    order: list[str] = []

    async def borrow(name: str, key: str, hold_s: float) -> None:
        async with supervisor.worker(model_key=key) as w:
            order.append(f"{name}@{w.id}")
            await asyncio.sleep(hold_s)

    holders = [asyncio.create_task(borrow("a", "a", 0.1)), asyncio.create_task(borrow("b", "b", 0.3))]
    await asyncio.sleep(0.01)
    cold = asyncio.create_task(borrow("c", "c", 0.3))
    await asyncio.sleep(0.01)
    warm = asyncio.create_task(borrow("a2", "a", 0.0))
    await asyncio.gather(*holders, cold, warm)
    assert order == ["a@0", "b@1", "c@0", "a2@1"]

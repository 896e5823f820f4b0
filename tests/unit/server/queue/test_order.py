"""The queue's in-memory order: priorities, FIFO, positions and what subscribers are told."""

from __future__ import annotations

from server.generation.progress import ProgressHub
from server.queue.order import QueueOrder
from server.queue.store import JobRecord, Priority


def _job(request_id: str, app_id: str = "a/b", priority: Priority = Priority.NORMAL) -> JobRecord:
    return JobRecord(request_id, app_id, app_id, "http://x", {}, priority=priority)


def _positions(hub: ProgressHub, *request_ids: str) -> list[int | None]:
    states = [hub.snapshot(rid)[0] if hub.snapshot(rid) else None for rid in request_ids]
    return [s["position"] if s else None for s in states]


def test_normal_before_low_fifo_within_each_and_positions_published() -> None:
    hub = ProgressHub()
    order = QueueOrder(hub)
    for record in (
        _job("low1", priority=Priority.LOW),
        _job("n1"),
        _job("n2", "c/d"),
        _job("low2", priority=Priority.LOW),
    ):
        order.add(record, waiting=True)
    order.add(_job("done"), waiting=False)
    order.publish_positions()
    assert [order.position(r) for r in ("n1", "n2", "low1", "low2", "done")] == [0, 1, 2, 3, None]
    assert _positions(hub, "n1", "n2", "low1", "low2", "done") == [0, 1, 2, 3, None]
    assert (order.length(), order.length("c/d"), order.length("x/y")) == (4, 1, 0)

    taken = order.take_next()
    assert taken.request_id == "n1" and order.position("n1") == 0  # dispatching: still first in line
    assert [r.request_id for r in order.pending()] == ["n2", "low1", "low2"]
    order.left("n1")  # it started
    assert order.position("n1") is None and _positions(hub, "n2", "low1", "low2") == [0, 1, 2]

    assert order.unqueue(order.jobs["low1"]) and not order.unqueue(order.jobs["low1"])
    assert not order.unqueue(order.jobs["n1"])  # no longer waiting
    assert _positions(hub, "n2", "low2") == [0, 1] and order.length() == 2
    order.forget("done")
    assert "done" not in order.jobs and order.has_pending()

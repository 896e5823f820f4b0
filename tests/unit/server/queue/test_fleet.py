"""The fleet's notifications between two hosts on a real PostgreSQL: live events relayed from the host
running a request to another, small ones inline and ones past NOTIFY's payload limit through the
relay table; cancels reach the other host; a host never hears its own notifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from server.queue.fleet import Capabilities, Fleet
from server.queue.postgres_store import PostgresJobStore
from server.queue.store import JobRecord
from tests.postgres import PostgresServer


class Member:
    """Records what its fleet tells it (the queue's side, a pure recorder here)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cancels: list[str] = []
        self.heard = asyncio.Event()

    def job_changed(self, request_id: str) -> None: ...
    def fenced(self) -> None: ...
    def resync(self) -> None: ...

    async def orphaned(self, records: list[JobRecord]) -> None: ...

    def cancel_requested(self, request_id: str) -> None:
        self.cancels.append(request_id)
        self.heard.set()

    def event_relayed(self, request_id: str, event: dict[str, Any]) -> None:
        self.events.append((request_id, event))
        self.heard.set()


@pytest_asyncio.fixture
async def hosts(postgres_server: PostgresServer) -> AsyncIterator[list[tuple[Fleet, Member]]]:
    url, started = postgres_server.database(), []
    for name in ("a", "b"):
        store = PostgresJobStore(url)
        await store.open()
        fleet = Fleet(
            store, name=name, lease_s=30.0, capabilities=lambda: Capabilities([], [], 0), max_attempts=2
        )
        member = Member()
        await fleet.start(member)
        started.append((fleet, member))
    yield started
    for fleet, _ in started:
        await fleet.stop()
        await fleet.store.close()


async def heard(member: Member, count: int) -> None:
    async with asyncio.timeout(10):
        while len(member.events) + len(member.cancels) < count:
            member.heard.clear()
            await member.heard.wait()


async def test_live_events_reach_the_other_host_small_and_large(hosts: list[tuple[Fleet, Member]]) -> None:
    (a, a_member), (_, b_member) = hosts
    small = {"type": "progress", "step": 1, "total": 4}
    large = {"type": "preview", "image": "x" * 20_000}  # past the 8 KB NOTIFY payload
    for event in (small, large, {**small, "step": 2}):
        a.relay("r1", event)
    await heard(b_member, 3)
    assert b_member.events == [("r1", small), ("r1", large), ("r1", {**small, "step": 2})]  # in order
    assert a_member.events == []  # a host does not hear its own


async def test_a_cancel_reaches_the_other_host(hosts: list[tuple[Fleet, Member]]) -> None:
    (_, a_member), (b, _) = hosts
    await b.request_cancel("r2")
    await heard(a_member, 1)
    assert a_member.cancels == ["r2"]

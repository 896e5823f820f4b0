"""Fleet hosts on one real PostgreSQL, each a ``JobQueue`` over a fake worker: routing by model files,
a lost lease, warm affinity, and published workflows shared by every host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import pytest_asyncio

from server.engine.models import load_manifest
from server.queue.fleet import Capabilities, Fleet
from server.queue.fleet_workflows import shared_catalog
from server.queue.job_queue import JobQueue
from server.queue.postgres_store import PostgresJobStore
from server.queue.store import JobStatus
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, load_endpoints
from tests.marked import marked_flux2
from tests.partition import Partition
from tests.postgres import PostgresServer
from tests.unit.server.queue.test_store import APP, FakeGenerator, fleet_of, make_queue, until
from tests.unit.server.workflows.test_published import node_types

MANIFEST = load_manifest()


@pytest.fixture(scope="module")
def endpoints() -> dict[str, Endpoint]:
    return load_endpoints(WORKFLOWS_DIR, MANIFEST)


@dataclass
class Host:
    queue: JobQueue
    fake: FakeGenerator
    store: PostgresJobStore

    @property
    def fleet(self) -> Fleet:
        assert self.queue.fleet is not None
        return self.queue.fleet

    async def submit(self, app_id: str, prompt: str = "x") -> str:
        endpoint = self.queue.endpoints[app_id]
        job = await self.queue.submit(endpoint, {"prompt": prompt}, url_path=app_id, base_url="http://h")
        return job.request_id

    def status(self, request_id: str) -> JobStatus | None:
        record = self.queue.get(request_id)
        return None if record is None else record.status


Hosts = Callable[..., Awaitable[Host]]


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.database()


@pytest_asyncio.fixture
async def host(database: str, endpoints: dict[str, Endpoint], tmp_path: Path) -> AsyncIterator[Hosts]:
    """Makes started hosts on one database: ``host(name, hold=, lease_s=, table=, offer=, url=)``, where
    ``table`` is its endpoint table, ``offer`` what it tells the fleet (default: every app in it) and
    ``url`` another way to the database (through a ``Partition``)."""
    made = []

    async def make(
        name: str, *, hold: bool = False, lease_s: float = 30.0, table: dict[str, Endpoint] | None = None,
        offer: Callable[[], Capabilities] | None = None, url: str = database,
    ) -> Host:  # fmt: skip
        store = PostgresJobStore(url)
        await store.open()
        table = endpoints if table is None else table
        queue, fake = make_queue(store, table, tmp_path / name, hold=hold)
        queue.fleet = fleet_of(store, table, name=name, lease_s=lease_s)
        made.append(started := Host(queue, fake, store))
        if offer is not None:
            started.fleet.capabilities = offer
        await queue.start()
        return started

    yield make
    for each in made:
        await each.queue.stop()
        await each.store.close()


async def test_a_fleet_request_waits_for_a_host_with_its_models_and_says_why(host: Hosts) -> None:
    thin = await host("thin", offer=lambda: Capabilities([], (), 1))  # this host has no model files
    request_id = await thin.submit(APP)
    await asyncio.sleep(0.5)
    assert thin.status(request_id) is JobStatus.IN_QUEUE
    record = thin.queue.get(request_id)
    assert record is not None and "No live host of the fleet has the model files" in (
        thin.queue.waiting_note(record) or ""
    )

    full = await host("full")  # a host that has the files joins: it runs the request, the other hears of it
    await until(lambda: thin.status(request_id) is JobStatus.COMPLETED)
    assert full.fake.finished == [request_id] and thin.queue.waiting_note(record) is None
    assert (await thin.queue.outcome(request_id)).ok


async def test_a_fleet_host_that_lost_its_lease_drops_its_run_and_another_host_runs_it(host: Hosts) -> None:
    first = await host("host-0", hold=True, lease_s=1.5)
    request_id = await first.submit(APP)
    await first.fake.wait_started(request_id)
    second = await host("host-1", hold=True, lease_s=1.5)
    lost = first.fleet.host_id
    async with await psycopg.AsyncConnection.connect(first.store.url, autocommit=True) as conn:
        await conn.execute("DELETE FROM darkroom.hosts WHERE host_id = %s", (lost,))  # its lease, reaped

    # It runs once more (on either host: the first rejoined as another host and may win the claim)...
    await until(lambda: len(first.fake.started) + len(second.fake.started) == 2)
    assert first.fake.cancelled == [request_id]  # ...and the first stopped its run, writing nothing
    assert first.fleet.host_id != lost  # it joined again as another host
    first.fake.release(request_id)
    second.fake.release(request_id)
    await until(lambda: first.status(request_id) is JobStatus.COMPLETED)
    stored = await first.store.get(request_id)
    assert stored is not None and stored.attempts == 2 and stored.outcome is not None and stored.outcome.ok
    assert first.fake.finished + second.fake.finished == [request_id]  # one run completed, once


async def test_a_status_read_racing_the_claim_does_not_undo_the_start(
    host: Hosts, endpoints: dict[str, Endpoint]
) -> None:
    a = await host("a", hold=True)
    b = await host("b", offer=lambda: Capabilities([], (), 1))  # it runs nothing
    a.queue.job_changed = lambda request_id: None  # type: ignore[method-assign]  # a hears only through find()
    a.fake.first_event, read = asyncio.Event(), asyncio.Event()
    stored_get = a.store.get

    async def late_get(request_id: str) -> Any:
        await read.wait()  # a status poll's read of the store that ends after a claimed the request
        return await stored_get(request_id)

    a.store.get = late_get  # type: ignore[method-assign]
    job = await b.queue.submit(
        endpoints[APP], {"prompt": "x"}, url_path=APP, base_url="http://h", timeout_s=1.0
    )  # fmt: skip
    polled = asyncio.create_task(a.queue.find(job.request_id))  # a status poll on a, which has not heard
    a.queue.wake()
    await until(lambda: job.request_id in a.queue._tasks)  # claimed: its worker has not started it yet
    read.set()
    await polled
    a.fake.first_event.set()
    await a.fake.wait_started(job.request_id)
    await asyncio.sleep(1.5)  # past its start deadline: it started, so the deadline no longer applies
    assert a.status(job.request_id) is JobStatus.IN_PROGRESS
    a.fake.release(job.request_id)
    await until(lambda: b.status(job.request_id) is JobStatus.COMPLETED)
    assert (await b.queue.outcome(job.request_id)).ok


@pytest.fixture
def partition(database: str) -> Iterator[Partition]:
    """Between one host and the database; healed and stopped before the hosts stop (ask for it after
    ``host``), so a failing test's hosts still stop at once."""
    partition = Partition(int(urlsplit(database).port or 5432))
    partition.start()
    yield partition
    partition.heal()
    partition.stop()


async def test_a_host_cut_off_from_the_database_stops_its_run_before_another_host_runs_it(
    host: Hosts, partition: Partition, database: str
) -> None:
    order: list[str] = []
    lease_s = 3.0
    cut_off = await host("cut-off", hold=True, lease_s=lease_s, url=database.replace(
        f":{partition.target_port}/", f":{partition.port}/"))  # fmt: skip
    request_id = await cut_off.submit(APP)
    await cut_off.fake.wait_started(request_id)
    other = await host("other", hold=True, lease_s=lease_s)
    cut_off.fake.cancelled, other.fake.started = Log(order, "stopped"), Log(order, "started elsewhere")

    partition.cut()  # no error, no answer: the host cannot tell a slow database from a lost one
    await until(lambda: order == ["stopped", "started elsewhere"], timeout_s=lease_s * 4)
    other.fake.release(request_id)
    await until(lambda: other.status(request_id) is JobStatus.COMPLETED)
    partition.heal()  # the host comes back under a new identity and hears the outcome
    await until(lambda: cut_off.status(request_id) is JobStatus.COMPLETED, timeout_s=30)
    stored = await other.store.get(request_id)
    assert stored is not None and stored.attempts == 2 and cut_off.fake.finished == []


class Log(list[str]):
    """A list that also notes, in one shared ``order``, that something was added to it."""

    def __init__(self, order: list[str], tag: str) -> None:
        super().__init__()
        self.order, self.tag = order, tag

    def append(self, item: str) -> None:
        self.order.append(self.tag)
        super().append(item)


async def test_a_fleet_leaves_a_request_to_the_idle_host_that_has_its_model_warm(
    host: Hosts, endpoints: dict[str, Endpoint]
) -> None:
    warm = await host("warm", offer=lambda: Capabilities(sorted(endpoints), (APP,), 1))
    cold = await host("cold", offer=lambda: Capabilities(sorted(endpoints), (), 1))
    for seed in range(5):  # submitted to the cold host, one at a time: both hosts hear of each at once
        request_id = await cold.submit(APP, str(seed))
        await until(lambda request_id=request_id: cold.status(request_id) is JobStatus.COMPLETED)  # type: ignore[misc]
    assert len(warm.fake.finished) == 5 and cold.fake.finished == []


async def test_a_workflow_published_through_one_host_is_served_and_run_by_the_fleet(
    host: Hosts, endpoints: dict[str, Endpoint]
) -> None:
    prompt = marked_flux2(MANIFEST)
    # a can run all it serves, published workflows included; b serves them but runs the built-in apps
    # alone (it lacks the files). Heartbeats come every 10 s: too late to matter here.
    a_table, b_table = dict(endpoints), dict(endpoints)
    a = await host("a", table=a_table, offer=lambda: Capabilities(sorted(a_table), (), 1))
    b = await host("b", table=b_table, offer=lambda: Capabilities(sorted(endpoints), (), 1))
    a_catalog, b_catalog = (shared_catalog(h.fleet, t, MANIFEST) for h, t in ((a, a_table), (b, b_table)))

    await a_catalog.publish("me/art", prompt, None, node_types(prompt))
    await until(lambda: {"me/art", "me/art@1"} <= set(b_table))
    assert b_catalog.versions("me/art")[0].prompt == prompt
    # Submitted to b: a claims it at once (its offer changed on publishing), not at its next heartbeat.
    request_id = await b.submit("me/art")
    await until(lambda: b.status(request_id) is JobStatus.COMPLETED)
    assert a.fake.finished == [request_id] and b.fake.finished == []

    await b_catalog.unpublish("me/art")  # through the other host: gone from both
    await until(lambda: not {"me/art", "me/art@1"} & set(a_table))
    assert a_catalog.names() == [] and await a_catalog.store.read() == []

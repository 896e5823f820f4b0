"""Published versions: immutable, numbered, served as owner/name (latest) and owner/name@n, kept in
files under the data dir or in a fleet's database (each test runs on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from server.engine.models import load_manifest
from server.errors import NotFoundError, RequestValidationError
from server.queue.fleet_workflows import FleetVersions
from server.queue.postgres_store import PostgresJobStore
from server.workflows.catalog import Catalog, VersionStore
from server.workflows.mapping import Endpoint
from server.workflows.version_files import VersionFiles
from tests.marked import marked_flux2, set_input
from tests.unit.server.workflows.test_published import node_types

MANIFEST = load_manifest()
BUILTIN = "darkroom/demo-flux-2"

Catalogs = Callable[..., Awaitable[Catalog]]


@pytest_asyncio.fixture
async def catalog(database_url: str, tmp_path: Path) -> AsyncIterator[Catalogs]:
    """Makes loaded catalogs on one store (again: a restart); its argument is the endpoint table."""
    opened: list[PostgresJobStore] = []

    async def make(endpoints: dict[str, Endpoint] | None = None) -> Catalog:
        store: VersionStore = VersionFiles(tmp_path)
        if database_url:
            opened.append(job_store := PostgresJobStore(database_url))
            await job_store.open()
            store = FleetVersions(job_store)
        table = endpoints if endpoints is not None else {BUILTIN: None}
        made = Catalog(store, table, MANIFEST)  # type: ignore[arg-type]
        await made.load()
        return made

    yield make
    for job_store in opened:
        await job_store.close()


async def test_versions_are_numbered_served_and_kept(catalog: Catalogs) -> None:
    prompt = marked_flux2(MANIFEST)
    first = await catalog()
    v1 = await first.publish("me/art", prompt, {"nodes": []}, node_types(prompt))
    v2 = await first.publish("me/art", set_input(prompt, "22", "value", 3), None, node_types(prompt))
    assert (v1.number, v2.number, v2.app_id) == (1, 2, "me/art@2")
    table = first.endpoints
    assert {"me/art", "me/art@1", "me/art@2"} <= set(table)
    assert table["me/art"].params["num_inference_steps"].default == 3, "the name serves the latest"
    assert table["me/art@1"].params["num_inference_steps"].default == 2, "@1 stays the first version"
    assert table["me/art@1"].app_id == "me/art@1"

    again = await catalog()  # a restart
    assert [v.number for v in again.versions("me/art")] == [1, 2]
    assert again.version("me/art", 1).workflow == {"nodes": []}
    assert again.endpoints["me/art"].params["num_inference_steps"].default == 3

    rollback = await again.publish("me/art", again.version("me/art", 1).prompt, None, node_types(prompt))
    assert rollback.number == 3 and again.endpoints["me/art"].params["num_inference_steps"].default == 2


async def test_unpublish_stops_serving_every_version(catalog: Catalogs) -> None:
    prompt = marked_flux2(MANIFEST)
    made = await catalog()
    await made.publish("me/art", prompt, None, node_types(prompt))
    assert [v.number for v in await made.unpublish("me/art")] == [1]
    assert "me/art" not in made.endpoints and "me/art@1" not in made.endpoints
    assert await made.store.read("me/art") == []
    with pytest.raises(NotFoundError, match="No published workflow 'me/art'"):
        made.versions("me/art")
    assert (await catalog()).names() == []
    again = await made.publish("me/art", prompt, None, node_types(prompt))
    assert again.number == 1, "a name published again starts over"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (BUILTIN, "collides with the built-in endpoint"),
        ("darkroom", "must be owner/name"),
        ("Me/Art", "must be owner/name"),
        ("me/art@2", "must be owner/name"),
        ("me/art/extra", "must be owner/name"),
        ("workflows/art", "is reserved"),
    ],
)
async def test_bad_names_are_422s(catalog: Catalogs, name: str, message: str) -> None:
    prompt = marked_flux2(MANIFEST)
    with pytest.raises(RequestValidationError) as caught:
        await (await catalog()).publish(name, prompt, None, node_types(prompt))
    assert message in caught.value.errors[0]["msg"] and caught.value.errors[0]["loc"] == ["body", "name"]


async def test_a_name_that_prefixes_a_builtin_endpoint_collides(catalog: Catalogs) -> None:
    prompt = marked_flux2(MANIFEST)
    made = await catalog({"fal-ai/flux/dev": None})
    with pytest.raises(RequestValidationError, match="collides"):
        await made.publish("fal-ai/flux", prompt, None, node_types(prompt))


async def test_a_rejected_workflow_leaves_nothing_behind(catalog: Catalogs) -> None:
    prompt = marked_flux2(MANIFEST)
    types = node_types(prompt)
    made = await catalog()
    with pytest.raises(RequestValidationError):
        await made.publish("me/art", set_input(prompt, "22", "field", "prompt"), None, types)
    assert made.names() == [] and "me/art" not in made.endpoints and await made.store.read() == []

"""A fleet's node-pack lock on a real PostgreSQL: `darkroom nodes add` on host A writes it, host B's
server converges to it (installs the pack from its source at the locked commit, same content hash,
restarts its workers), B offers a workflow needing the pack only once the pack is verified, and a
removal reaches B the same way. B's workers are a stand-in here (the verification in a real worker,
and a fleet host running the workflow, are tests/e2e/test_node_packs.py's)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.cli import main
from server.engine.models import load_manifest
from server.engine.node_packs import content_hash, lock_digest, read_lock
from server.engine.pack_check import check_packs
from server.engine.pack_watch import PackWatch
from server.generation.generator import Generator
from server.queue.fleet import capabilities_of
from server.queue.fleet_packs import FleetPacks
from server.queue.postgres_store import PostgresJobStore
from server.settings import load_settings
from tests.node_pack_builds import V1_NODE, build_pack
from tests.postgres import PostgresServer

pytestmark = pytest.mark.asyncio
NAME = "me/inverted"


class Workers:
    """Stands in for host B's supervisor: no workers, counts the rolling restarts asked for."""

    workers: tuple[Any, ...] = ()
    idle_workers = 1

    def __init__(self) -> None:
        self.restarts = 0

    async def restart_rolling(self, timeout_s: float) -> None:
        self.restarts += 1

    def warm_keys(self) -> set[str]:
        return set()


async def test_a_pack_added_on_one_host_is_installed_on_another(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.database()
    store = PostgresJobStore(url)
    await store.open()
    try:
        fleet = FleetPacks(store)
        host_b = load_settings({}, data_dir=str(tmp_path / "b"))
        workers = Workers()
        watch = PackWatch(host_b, workers, source=fleet.read)  # type: ignore[arg-type]
        assert await fleet.read() is None  # no lock yet: hosts keep their own
        (tmp_path / "b" / "node_packs" / "nodes" / "local").mkdir(parents=True)

        source = build_pack(tmp_path / "src", "v1pack")
        monkeypatch.setenv("DARKROOM_DATABASE_URL", url)
        on_host_a = ["nodes", "--data-dir", str(tmp_path / "a")]
        assert await asyncio.to_thread(main, [*on_host_a, "add", str(source)]) == 0
        on_a = read_lock(tmp_path / "a" / "node_packs.yaml")
        assert await fleet.read() == on_a

        # What B offers the fleet after each new report of its packs (the app tells its Fleet so).
        commit = on_a["v1pack"].commit
        node = {"class_type": V1_NODE, "_meta": {"node_pack": {"name": "v1pack", "commit": commit}}}
        needs_v1 = SimpleNamespace(workflow={"1": node}, models={}, models_key="")
        generator = Generator(
            host_b,
            workers,
            load_manifest(),
            None,
            None,
            node_packs=lambda: watch.report,  # type: ignore[arg-type]
        )
        served: Any = {NAME: needs_v1}
        offers: list[list[str]] = []
        watch.observers.append(lambda: offers.append(capabilities_of(served, generator, workers).apps))  # type: ignore[arg-type]

        await watch.converge()
        assert read_lock(tmp_path / "b" / "node_packs.yaml") == on_a
        installed = tmp_path / "b" / "node_packs" / "nodes" / "v1pack"
        assert content_hash(installed) == on_a["v1pack"].sha256
        assert not (tmp_path / "b" / "node_packs" / "nodes" / "local").exists(), "B has exactly the lock"
        assert workers.restarts == 1
        assert watch.report.packs["v1pack"].state == "pending" and offers == [[]], "not offered unverified"
        verified = check_packs(  # what B's worker would serve: the pack's node as its own
            on_a, watch.installer.paths.nodes, digest=lock_digest(on_a), declared={"v1pack": [V1_NODE]},
            object_info={V1_NODE: {"python_module": "custom_nodes.v1pack"}}, failed_imports=[],
        )  # fmt: skip
        watch._publish(verified)
        assert offers[-1] == [NAME], "offered once its pack is verified"
        await watch.converge()
        assert workers.restarts == 1, "converged: nothing more to do"

        assert await asyncio.to_thread(main, [*on_host_a, "remove", "v1pack"]) == 0
        assert await fleet.read() == {}
        await watch.converge()
        assert not installed.exists() and read_lock(tmp_path / "b" / "node_packs.yaml") == {}
        assert workers.restarts == 2
        assert offers[-1] == [], "no longer offered once its pack is gone"
    finally:
        await store.close()

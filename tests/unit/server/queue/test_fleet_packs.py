"""A fleet's node-pack lock on a real PostgreSQL: `darkroom nodes add` on host A writes it, host B's
server converges to it (installs the pack from its source at the locked commit, same content hash,
restarts its workers), and a removal reaches B the same way. B's workers are a stand-in here (the
verification in a real worker is tests/e2e/test_node_packs.py's)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.engine.node_packs import content_hash, lock_digest, read_lock
from server.engine.pack_watch import PackWatch
from server.queue.fleet_packs import FleetPacks
from server.queue.postgres_store import PostgresJobStore
from server.settings import load_settings
from tests.node_pack_builds import build_pack
from tests.postgres import PostgresServer

pytestmark = pytest.mark.asyncio


class Workers:
    """Stands in for host B's supervisor: no workers, counts the rolling restarts asked for."""

    workers: tuple[Any, ...] = ()

    def __init__(self) -> None:
        self.restarts = 0

    async def restart_rolling(self, timeout_s: float) -> None:
        self.restarts += 1


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

        await watch.converge()
        assert read_lock(tmp_path / "b" / "node_packs.yaml") == on_a
        installed = tmp_path / "b" / "node_packs" / "nodes" / "v1pack"
        assert content_hash(installed) == on_a["v1pack"].sha256
        assert not (tmp_path / "b" / "node_packs" / "nodes" / "local").exists(), "B has exactly the lock"
        assert workers.restarts == 1
        watch.report.digest = lock_digest(on_a)  # as B's workers would have verified it
        await watch.converge()
        assert workers.restarts == 1, "converged: nothing more to do"

        assert await asyncio.to_thread(main, [*on_host_a, "remove", "v1pack"]) == 0
        assert await fleet.read() == {}
        await watch.converge()
        assert not installed.exists() and read_lock(tmp_path / "b" / "node_packs.yaml") == {}
        assert workers.restarts == 2
    finally:
        await store.close()

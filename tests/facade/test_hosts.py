"""``GET /hosts``: this host alone without a fleet; with one, every live host of the fleet (as their
heartbeats left them), whichever host is asked, each marked as the one answering or not."""

from __future__ import annotations

from pathlib import Path

from queue_fakes import APP, FakeGenerator, serve

from server.settings import load_settings
from tests.postgres import PostgresServer


async def test_without_a_fleet_it_is_this_host(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), port=8123)
    async with serve(settings, FakeGenerator(settings)) as client:
        response = await client.get("/hosts")
        body = await response.json()
    assert response.status == 200 and body["fleet"] is False
    (host,) = body["hosts"]
    assert host["this_host"] and host["name"].endswith(":8123") and APP in host["apps"]
    assert host["idle_workers"] == 1 and host["warm"] == [] and host["lease_left_s"] is None


async def test_in_a_fleet_every_host_lists_every_live_host(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.database()
    first, second = (
        load_settings({}, data_dir=str(tmp_path / name), port=port, database_url=database)
        for name, port in (("a", 8201), ("b", 8202))
    )
    async with serve(first, FakeGenerator(first)) as a, serve(second, FakeGenerator(second)) as b:
        answers = [await (await client.get("/hosts")).json() for client in (a, b)]
    for index, body in enumerate(answers):
        assert body["fleet"] is True
        names = [host["name"].rsplit(":", 1)[1] for host in body["hosts"]]
        assert sorted(names) == ["8201", "8202"], body
        (this,) = [host for host in body["hosts"] if host["this_host"]]
        assert this["name"].endswith(f":{8201 + index}")
        assert all(APP in host["apps"] and host["lease_left_s"] > 0 for host in body["hosts"])

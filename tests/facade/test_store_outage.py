"""A fleet host whose database goes away (PostgreSQL restarted, or unreachable) answers the queue routes
that need it with a clear 503 store_unavailable, never a 500 or a hang, and serves again once the
database is back; status answers from the host's index go on meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from queue_fakes import APP, FakeGenerator, serve

from server.settings import load_settings
from tests.partition import Partition
from tests.postgres import PostgresServer


async def test_the_queue_answers_503_while_its_database_is_away_and_recovers(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.database()
    proxy = Partition(int(urlsplit(database).port or 5432))
    proxy.start()
    via_proxy = database.replace(f":{proxy.target_port}/", f":{proxy.port}/")
    settings = load_settings({}, data_dir=str(tmp_path), database_url=via_proxy)
    async with serve(settings, FakeGenerator(settings, hold=False)) as client:
        first = await client.post(f"/queue/{APP}", json={"prompt": "before"})
        request_id = (await first.json())["request_id"]
        assert first.status == 200

        proxy.stop()  # the database goes away: its connections drop, new ones are refused
        refused = await client.post(f"/queue/{APP}", json={"prompt": "during"})
        body = await refused.json()
        assert refused.status == 503 and body["error_type"] == "store_unavailable", body
        assert "job store" in body["detail"] and "try again" in body["detail"]
        status = await client.get(f"/queue/{APP}/requests/{request_id}/status")
        assert status.status in (200, 202), "a known request's status needs no database"

        proxy = Partition(proxy.target_port, port=proxy.port)  # back, at the same address
        proxy.start()
        async with asyncio.timeout(30):
            while (again := await client.post(f"/queue/{APP}", json={"prompt": "after"})).status != 200:
                assert again.status == 503, await again.text()
                await asyncio.sleep(0.5)
    proxy.stop()

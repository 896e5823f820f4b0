"""A fleet's node-pack lock: ``darkroom.node_packs`` on the fleet's PostgreSQL holds the one lock every
host converges to (server/engine/pack_watch.py installs it, restarts the workers one at a time and
verifies; a host advertises a published workflow only once its packs are verified there). ``darkroom
nodes add/remove/sync`` on any host writes it; a fleet that never had a lock leaves hosts' packs alone."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from server.engine.node_packs import LockedPack
from server.queue.postgres_store import Conn, PostgresJobStore


class FleetPacks:
    """The lock in the fleet's database."""

    def __init__(self, store: PostgresJobStore) -> None:
        self.store = store

    async def read(self) -> dict[str, LockedPack] | None:
        """The fleet's lock, or None if none was ever written."""

        async def select(conn: Conn) -> tuple[Any, ...] | None:
            return await (await conn.execute("SELECT lock FROM darkroom.node_packs WHERE id = 1")).fetchone()

        row = await self.store.call(select)
        if row is None:
            return None
        packs = [LockedPack(**{**p, "requirements": tuple(p["requirements"])}) for p in json.loads(row[0])]
        return {p.name: p for p in packs}

    async def write(self, packs: Mapping[str, LockedPack]) -> None:
        lock = json.dumps([packs[name].describe() for name in sorted(packs)])

        async def upsert(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO darkroom.node_packs (id, lock, updated_at) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET lock = excluded.lock, updated_at = excluded.updated_at",
                (lock, time.time()),
            )

        await self.store.call(upsert)

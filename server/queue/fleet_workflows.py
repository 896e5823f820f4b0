"""Published workflows shared by a fleet: the catalog's versions in ``darkroom.workflows`` on the
fleet's PostgreSQL. Each change notifies the other hosts (``wf`` on the fleet's channel), whose
catalogs read that name again, so a workflow published through any host is served by every host."""

from __future__ import annotations

import json
import time
from typing import Any

from server.engine.models import Manifest
from server.queue.fleet import Fleet
from server.queue.postgres_store import Conn, PostgresJobStore
from server.workflows.catalog import Catalog, Version
from server.workflows.mapping import Endpoint

NOTICE = "wf"  # the notification's kind: its key is the workflow's name
_LOCK_SPACE = 0x776B666C  # "wkfl": with hashtext(name), the advisory lock numbering one name's versions
_COLUMNS = "name, number, published_at, prompt, workflow"


def shared_catalog(fleet: Fleet, endpoints: dict[str, Endpoint], manifest: Manifest) -> Catalog:
    """This host's catalog of the fleet's published workflows: what another host changes is served
    here at once, and a change of what this host can run is offered to the fleet at once."""
    catalog = Catalog(FleetVersions(fleet.store), endpoints, manifest)
    catalog.observers.append(lambda _name: fleet.offer_changed())
    fleet.listeners[NOTICE] = catalog.refresh
    return catalog


class FleetVersions:
    """``VersionStore`` on the fleet's database."""

    def __init__(self, store: PostgresJobStore) -> None:
        self.store = store

    async def read(self, name: str | None = None) -> list[Version]:
        where, params = ("WHERE name = %s", (name,)) if name is not None else ("", ())

        async def select(conn: Conn) -> list[tuple[Any, ...]]:
            sql = f"SELECT {_COLUMNS} FROM darkroom.workflows {where} ORDER BY name, number"
            return await (await conn.execute(sql, params)).fetchall()

        return [_version(row) for row in await self.store.call(select)]

    async def add(self, name: str, prompt: dict[str, Any], workflow: dict[str, Any] | None) -> Version:
        async def insert(conn: Conn) -> tuple[Any, ...] | None:
            # Two hosts publishing one name at once take turns: each gets its own next number.
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, name))
            cursor = await conn.execute(
                f"INSERT INTO darkroom.workflows ({_COLUMNS}) "
                "SELECT %s, COALESCE(max(number), 0) + 1, %s, %s, %s FROM darkroom.workflows WHERE name = %s "
                f"RETURNING {_COLUMNS}",
                (name, time.time(), json.dumps(prompt), _json_or_none(workflow), name),
            )
            await self.store.notify(conn, NOTICE, name)
            return await cursor.fetchone()

        row = await self.store.call(insert)
        assert row is not None
        return _version(row)

    async def remove(self, name: str) -> None:
        async def delete(conn: Conn) -> None:
            await conn.execute("DELETE FROM darkroom.workflows WHERE name = %s", (name,))
            await self.store.notify(conn, NOTICE, name)

        await self.store.call(delete)


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _version(row: tuple[Any, ...]) -> Version:
    name, number, published_at, prompt, workflow = row
    return Version(
        name,
        int(number),
        float(published_at),
        json.loads(prompt),
        None if workflow is None else json.loads(workflow),
    )

"""Node packs over HTTP, for admins only: ``GET /nodes`` (the lock, each pack with its state in the
workers), ``POST /nodes`` ``{source, name?}`` (install and lock a pack: 201 once installed, then the
workers restart one at a time and verify it), ``DELETE /nodes/{name}``. The same as ``darkroom nodes``
on the host (server/engine/node_packs.py); in a fleet the change goes to the fleet's lock first.

Installing a pack runs its code in the workers, as the server's user: an admin key's action, never a
runner's or developer's (403), never something a request or a published workflow can trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.api.access import requires
from server.api.described import operation
from server.api.request import read_model
from server.api.state import PACKS
from server.engine.node_packs import NAME_PATTERN, Installer, LockedPack, lock_digest
from server.engine.pack_check import PENDING
from server.engine.pack_watch import PackWatch
from server.security.roles import Role

_SHARE_TIMEOUT_S = 30.0


class NewPack(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    source: str = Field(
        min_length=1, max_length=2000, pattern=r"^[^\s-]\S*$",
        description="SOURCE[@REV]: a git URL or a git repository on the host; a commit, tag or branch",
    )  # fmt: skip
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="Its folder name (default: the source's last path segment, which must not be taken "
        "by a pack from another source)",
    )  # fmt: skip


def routes() -> list[web.RouteDef]:
    return [
        web.get("/nodes", list_packs),
        web.post("/nodes", add_pack),
        web.delete("/nodes/{name}", remove_pack),
    ]


def _installer(watch: PackWatch) -> Installer:
    """This host's installer; in a fleet it writes the fleet's lock (on this loop) before the host's."""
    share = watch.share
    if share is None:
        return Installer(watch.settings)
    loop = asyncio.get_running_loop()

    def write_fleet(packs: Mapping[str, LockedPack]) -> None:  # called from the installer's thread
        asyncio.run_coroutine_threadsafe(share(packs), loop).result(_SHARE_TIMEOUT_S)

    return Installer(watch.settings, share=write_fleet)


def _described(watch: PackWatch, pack: LockedPack) -> dict[str, Any]:
    """A locked pack with its state, as the last verification of this very lock found it."""
    report = watch.report
    state = report.packs.get(pack.name)
    if report.digest != lock_digest(watch.installer.locked()) or state is None:
        return {**pack.describe(), "state": PENDING, "problems": [], "nodes": []}
    return {**state.describe(), **pack.describe()}


@operation(
    summary="The locked node packs, each with its state in the workers (ok, failed, pending)",
    responses={200: "The packs"},
    tag="node packs",
)
@requires(Role.ADMIN)
async def list_packs(request: web.Request) -> web.Response:
    watch = request.app[PACKS]
    locked = watch.installer.locked()
    return web.json_response({"packs": [_described(watch, locked[name]) for name in sorted(locked)]})


@operation(
    summary="Install and lock a node pack (its code runs in the workers: admin keys only)",
    body=NewPack,
    responses={
        201: "Installed and locked; the workers restart one at a time to load it (state pending until "
        "verified: GET /nodes)",
        422: "Invalid body, or the pack is refused: its clone or checkout failed, a requirement conflicts "
        "with the workers' pinned environment (named), or its name is taken by another source's pack",
    },
    refusals={422: ("node_pack_error",)},  # what git and pip find: no schema can say it
    tag="node packs",
)
@requires(Role.ADMIN)
async def add_pack(request: web.Request) -> web.Response:
    body = await read_model(request, NewPack)
    watch = request.app[PACKS]
    installer = _installer(watch)
    async with watch.changing:
        pack = await asyncio.to_thread(installer.add, body.source, body.name)
    return web.json_response(_described(watch, pack), status=201)


@operation(
    summary="Unlock and delete a node pack (workflows needing it answer 503 naming it)",
    responses={200: "Removed", 404: "No pack of that name is locked"},
    path={"name": NAME_PATTERN},
    tag="node packs",
)
@requires(Role.ADMIN)
async def remove_pack(request: web.Request) -> web.Response:
    watch = request.app[PACKS]
    installer = _installer(watch)
    async with watch.changing:
        pack = await asyncio.to_thread(installer.remove, request.match_info["name"])
    return web.json_response(pack.describe())

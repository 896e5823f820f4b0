"""Managed API keys, for admins: ``GET /keys``, ``POST /keys`` (the secret is in the answer, once),
``DELETE /keys/{name}`` (revoke), ``POST /keys/{name}/rotate`` (a new secret), ``PATCH /keys/{name}``
(limits: raising a budget needs no restart). ``darkroom keys`` does the same from the shell.

Every host reads the keys again every ``KEY_REFRESH_S`` (``refresh_forever``), and the host that made
a change at once, so a key created on one host of a fleet works on all, and a revoked one stops
working on all, within that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.api.access import requires
from server.api.described import operation
from server.api.request import read_model
from server.api.state import ACCOUNTS, KEYS
from server.errors import DarkroomError, NotFoundError
from server.json_types import WHOLE
from server.queue.accounts import Accounts, KeyRecord
from server.security.keyring import KeyRing
from server.security.roles import APP_PATTERN, NAME, Limits, Role, check_apps

logger = logging.getLogger(__name__)

KEY_REFRESH_S = 0.5  # how stale a host's view of the keys may be (revocation takes effect within it)
NAME_PARAM = {"name": NAME.pattern}


class KeyLimits(BaseModel):
    """A key's limits; null or absent: unlimited."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rate_per_min: Annotated[int, Field(ge=1, le=1_000_000), WHOLE] | None = Field(
        default=None, description="Requests per minute"
    )
    max_concurrent: Annotated[int, Field(ge=1, le=100_000), WHOLE] | None = Field(
        default=None, description="Requests queued or running at once"
    )
    monthly_gpu_s: float | None = Field(
        default=None, ge=0, le=1e12, description="GPU-seconds per calendar month (UTC); then 402"
    )
    monthly_usd: float | None = Field(
        default=None, ge=0, le=1e12,
        description="USD per calendar month (UTC), GPU-seconds at DARKROOM_GPU_HOURLY_USD; then 402",
    )  # fmt: skip

    def limits(self) -> Limits:
        return Limits(self.rate_per_min, self.max_concurrent, self.monthly_gpu_s, self.monthly_usd)


class NewKey(KeyLimits):
    name: str = Field(pattern=NAME.pattern, description="The key's name, also its user id")
    role: Role = Field(default=Role.RUNNER, strict=False, description="runner, developer or admin")
    apps: list[Annotated[str, Field(pattern=APP_PATTERN.pattern)]] = Field(
        default_factory=list, max_length=64, description="App patterns it may call (none: every app)"
    )
    model_config = ConfigDict(extra="forbid", strict=True, use_enum_values=False)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/keys", list_keys),
        web.post("/keys", create_key),
        web.delete("/keys/{name}", revoke_key),
        web.post("/keys/{name}/rotate", rotate_key),
        web.patch("/keys/{name}", set_limits),
    ]


async def refresh(app: web.Application) -> None:
    """Read the valid managed keys again and hand them to the key ring."""
    install(app[KEYS], await app[ACCOUNTS].keys())


def install(keys: KeyRing, records: list[KeyRecord]) -> None:
    keys.replace_managed({bytes.fromhex(r.digest_hex): r.caller for r in records})


async def refresh_forever(app: web.Application) -> AsyncIterator[None]:
    """Keep this host's key ring within ``KEY_REFRESH_S`` of the store (cleanup context)."""

    async def once() -> None:
        try:
            await refresh(app)
        except Exception as e:  # the store is away: keep the keys last read
            logger.warning("could not read the managed keys (keeping the last ones read): %s", e)

    async def loop() -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            await once()

    await once()  # before the first request
    task = asyncio.create_task(loop(), name="keys-refresh")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _accounts(request: web.Request) -> Accounts:
    return request.app[ACCOUNTS]


def _missing(name: str) -> NotFoundError:
    return NotFoundError(
        f"No valid key named {name!r} (GET /keys lists them; revoked keys with ?revoked=true)"
    )


@operation(
    summary="List the managed keys (no secrets)",
    query={"revoked": "true: the revoked keys too"},
    responses={200: "The keys"},
    tag="keys",
)
@requires(Role.ADMIN)
async def list_keys(request: web.Request) -> web.Response:
    records = await _accounts(request).keys(revoked=request.query.get("revoked") == "true")
    return web.json_response({"keys": [r.public() for r in records]})


@operation(
    summary="Create a key: its secret is in the answer, and only there",
    body=NewKey,
    responses={201: "The key and its secret", 422: "Invalid body, or a valid key has that name"},
    refusals={422: ("key_exists",)},  # another key's name: no schema can say which names are taken
    tag="keys",
)
@requires(Role.ADMIN)
async def create_key(request: web.Request) -> web.Response:
    body = await read_model(request, NewKey)
    apps = check_apps(body.apps)
    secret = await _accounts(request).issue(body.name, body.role, apps, body.limits(), time.time())
    if secret is None:
        raise DarkroomError(
            f"A valid key is named {body.name!r}: revoke it first, or rotate it for a new secret.",
            status=422, code="key_exists",
        )  # fmt: skip
    await refresh(request.app)
    logger.info("key %r created (%s)", body.name, body.role.value)
    record = KeyRecord(body.name, "", body.role, apps, time.time(), None, body.limits())
    return web.json_response({**record.public(), "key": secret}, status=201)


@operation(
    summary="Revoke a key (on every host within a second)",
    responses={200: "Revoked", 404: "No valid key of that name"},
    path=NAME_PARAM,
    tag="keys",
)
@requires(Role.ADMIN)
async def revoke_key(request: web.Request) -> web.Response:
    name, now = request.match_info["name"], time.time()
    if not await _accounts(request).revoke(name, now):
        raise _missing(name)
    await refresh(request.app)
    logger.info("key %r revoked", name)
    return web.json_response({"name": name, "revoked_at": now})


@operation(
    summary="Give a key a new secret (the old one stops working)",
    responses={200: "The new secret", 404: "No valid key of that name"},
    path=NAME_PARAM,
    tag="keys",
)
@requires(Role.ADMIN)
async def rotate_key(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    secret = await _accounts(request).rotate_secret(name)
    if secret is None:
        raise _missing(name)
    await refresh(request.app)
    logger.info("key %r rotated", name)
    return web.json_response({"name": name, "key": secret})


@operation(
    summary="Set a key's limits (a budget raised takes effect at once)",
    body=KeyLimits,
    responses={200: "The key", 404: "No valid key of that name"},
    path=NAME_PARAM,
    tag="keys",
)
@requires(Role.ADMIN)
async def set_limits(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_model(request, KeyLimits)
    if not await _accounts(request).set_limits(name, body.limits()):
        raise _missing(name)
    await refresh(request.app)
    record = next(r for r in await _accounts(request).keys() if r.name == name)
    return web.json_response(record.public())

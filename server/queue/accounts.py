"""Managed API keys and usage rows, kept in the job store (SQLite alone, PostgreSQL in a fleet).

``api_keys``: one row per key name: the sha256 digest of its secret (never the secret), role, app
patterns, limits, and when it was created and revoked (a revoked key's row stays, for the record, until
the name is used again). ``usage``: one row per finished request (``UsageRow``): who, which endpoint,
its status, and what it used. Both stores run the same SQL through ``SqlRunner``: only the placeholder
and the table prefix differ.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.security.keyring import digest_of
from server.security.roles import Caller, Limits, Role

KEY_COLUMNS = (
    "name, digest, role, apps, created_at, revoked_at, rate_per_min, max_concurrent, monthly_gpu_s, "
    "monthly_usd"
)
USAGE_COLUMNS = (
    "finished_at, key_name, app_id, status, gpu_s, device, queue_s, megapixels, video_s, training_steps, "
    "worker, device_name, cost_usd"
)
# The tables, in both stores' dialects ({real}: REAL or DOUBLE PRECISION; {t}: the table prefix).
SCHEMA = """
CREATE TABLE {t}api_keys (
    name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, role TEXT NOT NULL, apps TEXT NOT NULL,
    created_at {real} NOT NULL, revoked_at {real},
    rate_per_min INTEGER, max_concurrent INTEGER, monthly_gpu_s {real}
);
CREATE TABLE {t}usage (
    finished_at {real} NOT NULL, key_name TEXT NOT NULL, app_id TEXT NOT NULL, status INTEGER NOT NULL,
    gpu_s {real} NOT NULL, device TEXT NOT NULL, queue_s {real} NOT NULL, megapixels {real} NOT NULL,
    video_s {real} NOT NULL, training_steps INTEGER NOT NULL
);
CREATE INDEX usage_time ON {t}usage (finished_at);
"""
# The cost budget, a later step of both stores' migrations.
COST_BUDGET = "ALTER TABLE {t}api_keys ADD COLUMN monthly_usd {real}"
# Which worker ran a row and what it cost when it was written (at that host's prices), a later step:
# rows written before it have NULLs there and are priced when read, by device kind (``Accounts``).
ROW_COST = """
ALTER TABLE {t}usage ADD COLUMN worker INTEGER;
ALTER TABLE {t}usage ADD COLUMN device_name TEXT;
ALTER TABLE {t}usage ADD COLUMN cost_usd {real};
"""


class SqlRunner(Protocol):
    """What a job store offers for this module: its SQL dialect and one-transaction calls."""

    placeholder: str  # "?" (SQLite) or "%s" (PostgreSQL)
    table_prefix: str  # "" or "darkroom."

    async def sql_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    async def sql_write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per row of parameters in one transaction; the rows changed."""


@dataclass(frozen=True)
class KeyRecord:
    """A managed key as stored."""

    name: str
    digest_hex: str
    role: Role
    apps: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None
    limits: Limits = Limits()

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.role, self.apps, user_id=self.name, limits=self.limits, managed=True)

    def public(self) -> dict[str, Any]:
        """What listings show (no digest)."""
        return {
            "name": self.name, "role": self.role.value, "apps": list(self.apps),
            "created_at": self.created_at, "revoked_at": self.revoked_at,
            "rate_per_min": self.limits.rate_per_min, "max_concurrent": self.limits.max_concurrent,
            "monthly_gpu_s": self.limits.monthly_gpu_s, "monthly_usd": self.limits.monthly_usd,
        }  # fmt: skip


@dataclass(frozen=True)
class UsageRow:
    """What one finished request used. ``gpu_s``: seconds its worker spent on it (measured on the
    facade from hand-over to answer: queue wait excluded, idle time never counted); ``device``: the
    worker's device kind (``cpu``, ``cuda``); ``worker`` and ``device_name``: which worker of the host
    ran it and its device as ComfyUI names it (None and "" when no worker took it); ``cost_usd``: what
    it cost at the writing host's prices when it was written (None: a row from before that was kept)."""

    finished_at: float
    key_name: str
    app_id: str
    status: int
    gpu_s: float = 0.0
    device: str = "cpu"
    queue_s: float = 0.0
    megapixels: float = 0.0
    video_s: float = 0.0
    training_steps: int = 0
    worker: int | None = None
    device_name: str = ""
    cost_usd: float | None = None

    def values(self) -> tuple[Any, ...]:
        return (
            self.finished_at, self.key_name, self.app_id, self.status, self.gpu_s, self.device,
            self.queue_s, self.megapixels, self.video_s, self.training_steps, self.worker,
            self.device_name, self.cost_usd,
        )  # fmt: skip


@dataclass(frozen=True)
class MonthTotal:
    """One key's usage on one device kind this month: GPU-seconds, the rows' stored cost, and the
    GPU-seconds of rows without one (``ROW_COST``), which the reader prices by device kind."""

    device: str
    gpu_s: float
    stored_usd: float
    unpriced_gpu_s: float


class Accounts:
    """Keys and usage on a job store."""

    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner
        self._t = runner.table_prefix

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.runner.placeholder).replace("{t}", self._t)

    async def keys(self, *, revoked: bool = False) -> list[KeyRecord]:
        """Every valid key (and the revoked ones too with ``revoked``), by name."""
        where = "" if revoked else "WHERE revoked_at IS NULL"
        rows = await self.runner.sql_rows(
            self._sql(f"SELECT {KEY_COLUMNS} FROM {{t}}api_keys {where} ORDER BY name")
        )
        return [_key(row) for row in rows]

    async def issue(
        self, name: str, role: Role, apps: tuple[str, ...], limits: Limits, now: float
    ) -> str | None:
        """A new key's secret (shown once, stored only as its digest), or None when a valid key has
        that name."""
        secret = new_secret()
        record = KeyRecord(name, digest_of(secret).hex(), role, apps, now, None, limits)
        return secret if await self.create(record) else None

    async def rotate_secret(self, name: str) -> str | None:
        """A valid key's new secret (its old one stops working), or None when there is no such key."""
        secret = new_secret()
        return secret if await self.rotate(name, digest_of(secret).hex()) else None

    async def create(self, record: KeyRecord) -> bool:
        """Store a new key; False when a valid key has that name (a revoked one's name is reused)."""
        values = (
            record.name, record.digest_hex, record.role.value, json.dumps(list(record.apps)),
            record.created_at, None, *_limit_values(record.limits),
        )  # fmt: skip
        await self.runner.sql_write(
            self._sql("DELETE FROM {t}api_keys WHERE name = ? AND revoked_at IS NOT NULL"), [(record.name,)]
        )
        sql = f"INSERT INTO {{t}}api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
        return await self.runner.sql_write(self._sql(sql), [values]) > 0

    async def revoke(self, name: str, at: float) -> bool:
        """Revoke a valid key; whether there was one."""
        sql = "UPDATE {t}api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
        return await self.runner.sql_write(self._sql(sql), [(at, name)]) > 0

    async def rotate(self, name: str, digest_hex: str) -> bool:
        """Give a valid key a new secret (the old one stops working); whether there was one."""
        sql = "UPDATE {t}api_keys SET digest = ? WHERE name = ? AND revoked_at IS NULL"
        return await self.runner.sql_write(self._sql(sql), [(digest_hex, name)]) > 0

    async def set_limits(self, name: str, limits: Limits) -> bool:
        """Replace a valid key's limits (raising a budget needs no restart); whether there was one."""
        sql = (
            "UPDATE {t}api_keys SET rate_per_min = ?, max_concurrent = ?, monthly_gpu_s = ?, monthly_usd = ? "
            "WHERE name = ? AND revoked_at IS NULL"
        )
        return await self.runner.sql_write(self._sql(sql), [(*_limit_values(limits), name)]) > 0

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            sql = f"INSERT INTO {{t}}usage ({USAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            await self.runner.sql_write(self._sql(sql), [row.values() for row in rows])

    async def usage(self, since: float, until: float, key_name: str | None = None) -> list[UsageRow]:
        """The rows finished in [since, until), of one key or all, oldest first."""
        where, params = "finished_at >= ? AND finished_at < ?", list[Any]([since, until])
        if key_name is not None:
            where += " AND key_name = ?"
            params.append(key_name)
        sql = f"SELECT {USAGE_COLUMNS} FROM {{t}}usage WHERE {where} ORDER BY finished_at"
        return [_usage(row) for row in await self.runner.sql_rows(self._sql(sql), params)]

    async def month_totals(self, since: float) -> dict[str, list[MonthTotal]]:
        """Each key's metered GPU-seconds and stored cost since ``since`` (the budgets' month), per
        device kind, with the GPU-seconds of rows that have no stored cost (written before costs were)."""
        sql = (
            "SELECT key_name, device, SUM(gpu_s), SUM(cost_usd), "
            "SUM(CASE WHEN cost_usd IS NULL THEN gpu_s ELSE 0 END) FROM {t}usage WHERE finished_at >= ? "
            "GROUP BY key_name, device"
        )
        totals: dict[str, list[MonthTotal]] = {}
        for name, device, gpu_s, usd, unpriced_s in await self.runner.sql_rows(self._sql(sql), [since]):
            total = MonthTotal(device, float(gpu_s or 0.0), float(usd or 0.0), float(unpriced_s or 0.0))
            totals.setdefault(name, []).append(total)
        return totals


def new_secret() -> str:
    """A key's secret: 32 random bytes, URL-safe, marked so it is recognisable in a leak scan."""
    return "drk_" + secrets.token_urlsafe(32)


def _limit_values(limits: Limits) -> tuple[int | None, int | None, float | None, float | None]:
    return limits.rate_per_min, limits.max_concurrent, limits.monthly_gpu_s, limits.monthly_usd


def _real(value: Any) -> float | None:
    return None if value is None else float(value)


def _usage(row: Sequence[Any]) -> UsageRow:
    finished_at, key_name, app_id, status, gpu_s, device, queue_s, megapixels, video_s, steps = row[:10]
    worker, name, usd = row[10:]
    return UsageRow(
        finished_at, key_name, app_id, status, gpu_s, device, queue_s, megapixels, video_s, steps,
        worker=worker, device_name=name or "", cost_usd=_real(usd),
    )  # fmt: skip


def _key(row: Sequence[Any]) -> KeyRecord:
    name, digest, role, apps, created_at, revoked_at, rate, concurrent, budget, usd = row
    limits = Limits(rate, concurrent, _real(budget), _real(usd))
    return KeyRecord(name, digest, Role(role), tuple(json.loads(apps)), float(created_at), revoked_at, limits)

"""Roles of API keys and who a request comes from: ``runner`` < ``developer`` < ``admin``.

A ``runner`` calls endpoints (only the apps its patterns match, when it has any) and reads its own
requests; a ``developer`` may also publish workflows and use the editor; an ``admin`` may also manage
keys, see everyone's requests and usage, and read the operator's routes (metrics, hosts, dashboard).
Keys from ``DARKROOM_API_KEYS``/``DARKROOM_API_KEYS_FILE`` are admins, and so is every request to an
open server (no key configured), so nothing changes for a set-up without managed keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from server.errors import InputError

# A managed key's name is also the user id its requests run under (webhooks, usage, ownership).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")
NAME_RULE = "1-128 of letters, digits and . _ @ : + - (starting with a letter or digit)"
# An --apps pattern: an app's owner/alias or alias, with shell wildcards (* ? [...]).
APP_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]._/@-]{1,200}$")


class Role(StrEnum):
    RUNNER = "runner"
    DEVELOPER = "developer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def covers(self, required: Role) -> bool:
        """Whether this role may do what ``required`` may."""
        return self.rank >= required.rank


_RANKS = {Role.RUNNER: 0, Role.DEVELOPER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Limits:
    """A key's limits; None: unlimited. Budgets are per calendar month (UTC): metered GPU-seconds, and
    their cost in USD at ``DARKROOM_GPU_HOURLY_USD``."""

    rate_per_min: int | None = None
    max_concurrent: int | None = None
    monthly_gpu_s: float | None = None
    monthly_usd: float | None = None


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its key's name, role, app patterns and limits. ``user_id`` is what its
    queue requests run under (None: the default user, as for a configured key that names none)."""

    name: str
    role: Role
    apps: tuple[str, ...] = ()  # empty: every app
    user_id: str | None = None
    limits: Limits = Limits()
    managed: bool = False  # created at run time (CLI, /keys), as opposed to a configured key

    def allows_app(self, owner: str, alias: str) -> bool:
        """Whether an --apps pattern matches ``owner/alias`` or ``alias`` (every app without patterns)."""
        if not self.apps:
            return True
        return any(fnmatchcase(f"{owner}/{alias}", p) or fnmatchcase(alias, p) for p in self.apps)

    def may(self, required: Role) -> bool:
        return self.role.covers(required)


OPEN_CALLER = Caller("open-access", Role.ADMIN)


def check_name(name: str) -> str:
    """A key name as given, or a 422 saying what a name may be."""
    if not NAME.match(name):
        raise InputError(f"Invalid key name {name!r}: a name is {NAME_RULE}.")
    return name


def check_apps(patterns: list[str]) -> tuple[str, ...]:
    """App patterns as given, or a 422 naming the first bad one."""
    for pattern in patterns:
        if not APP_PATTERN.match(pattern):
            raise InputError(
                f"Invalid app pattern {pattern!r}: an app's owner/alias or alias of letters, digits "
                "and . _ / @ -, with wildcards * ? [...] (for example 'fal-ai/flux-2*' or 'darkroom/*')."
            )
    return tuple(dict.fromkeys(patterns))

"""API keys: the configured keys, kept only as sha256 digests and compared in constant time.

Keys come from ``api_keys`` and ``api_keys_file``; a key is never logged. fal's ``KEY_ID:KEY_SECRET``
form is just a key. A key may name the user id its queue requests' webhooks are signed with
(``<key> <user id>``); requests with a key that names none, and open access, use
``store.DEFAULT_USER_ID``. With no key configured the server is open, which ``check_exposure`` allows
only on a loopback address (or with ``open_access``).

Configured keys are admins (``server.security.roles``). Keys managed at run time (``darkroom keys``,
``/keys``) live hashed in the job store; the app reads them again every ``KEY_REFRESH_S`` and hands them
to ``replace_managed``, so a key created or revoked anywhere (another host of a fleet, the CLI) takes
effect here within that time. A managed key is found by its digest in a dict: the digest of a
high-entropy secret, so the lookup's timing says nothing about any key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import ConfigError
from server.security.roles import Caller, Role
from server.security.tokens import TokenSigner
from server.settings import Settings

# Sent in the X-Fal-Webhook-User-Id header: no spaces, no control characters.
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")


@dataclass
class KeyRing:
    """The configured keys (sha256 digest -> user id or None), the managed keys (digest -> caller) and
    the signer of short-lived tokens."""

    users: Mapping[bytes, str | None]
    tokens: TokenSigner = field(default_factory=TokenSigner.ephemeral, repr=False)
    managed: Mapping[bytes, Caller] = field(default_factory=dict)
    _by_name: dict[str, Caller] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.replace_managed(self.managed)

    @classmethod
    def from_settings(cls, settings: Settings, tokens: TokenSigner | None = None) -> KeyRing:
        """Keys from ``api_keys`` plus ``api_keys_file``; an unreadable or malformed file, or a key given
        two user ids, is a ConfigError. Without ``tokens`` the token secret lives only in this object."""
        users: dict[bytes, str | None] = {}
        for number, entry in enumerate(_split_keys(settings.api_keys), 1):
            _add(users, *_parse_entry(entry, f"DARKROOM_API_KEYS entry {number}"))
        if settings.api_keys_file:
            for digest, user_id, where in _read_keys_file(Path(settings.api_keys_file)):
                _add(users, digest, user_id, where)
        return cls(users, tokens or TokenSigner.ephemeral())

    @property
    def digests(self) -> frozenset[bytes]:
        return frozenset(self.users)

    @property
    def open(self) -> bool:
        """No key configured or managed: every request is let through (loopback-only unless open_access)."""
        return not self.users and not self.managed

    def replace_managed(self, callers: Mapping[bytes, Caller]) -> None:
        """The managed keys now valid (digest -> caller), replacing the previous set at once."""
        self.managed = dict(callers)
        self._by_name = {c.name: c for c in self.managed.values()}

    def lookup(self, key: str) -> tuple[bool, str | None]:
        """(whether ``key`` is accepted, its user id)."""
        caller = self.caller(key)
        return caller is not None, None if caller is None else caller.user_id

    def caller(self, key: str) -> Caller | None:
        """Who ``key`` is, or None; compares every configured digest so timing reveals nothing."""
        candidate = _digest(key)
        found: Caller | None = None
        for digest, user in self.users.items():
            if hmac.compare_digest(candidate, digest):
                found = _configured(digest, user)
        return found or self.managed.get(candidate)

    def named(self, name: str) -> Caller | None:
        """The key called ``name`` while it is valid (a browser session names its key so)."""
        if (caller := self._by_name.get(name)) is not None:
            return caller
        return next((c for d, u in self.users.items() if (c := _configured(d, u)).name == name), None)

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is configured."""
        return self.lookup(key)[0]

    def issue_token(self, scope: str, ttl_s: float, **claims: str) -> tuple[str, float]:
        """A bearer token for ``scope`` valid ``ttl_s`` seconds, and its expiry (unix seconds)."""
        return self.tokens.issue(scope, ttl_s, **claims)

    def token_scope(self, token: str) -> str | None:
        """The scope of a valid, unexpired token from ``issue_token``; None otherwise."""
        return self.tokens.scope_of(token)


def _configured(digest: bytes, user_id: str | None) -> Caller:
    """A configured key: an admin named by its user id, or by its digest's first 4 bytes."""
    return Caller(user_id or f"config-{digest[:4].hex()}", Role.ADMIN, user_id=user_id)


def digest_of(key: str) -> bytes:
    """The sha256 digest a key is kept as."""
    return _digest(key)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _parse_entry(entry: str, where: str) -> tuple[bytes, str | None, str]:
    """``<key>`` or ``<key> <user id>`` (``sha256:<hex>`` in place of the key): (digest, user id, where)."""
    secret, *rest = entry.split()
    if len(rest) > 1:
        raise ConfigError(f"{where}: expected '<key>' or '<key> <user id>', got {len(rest) + 1} words")
    user_id = rest[0] if rest else None
    if user_id is not None and not _USER_ID.match(user_id):
        raise ConfigError(
            f"{where}: user id {user_id!r} must be 1-128 of letters, digits and . _ @ : + - "
            "(starting with a letter or digit)"
        )
    if not secret.startswith("sha256:"):
        return _digest(secret), user_id, where
    try:
        digest = bytes.fromhex(secret.removeprefix("sha256:"))
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ConfigError(f"{where}: sha256: must be followed by 64 hex digits")
    return digest, user_id, where


def _add(users: dict[bytes, str | None], digest: bytes, user_id: str | None, where: str) -> None:
    if digest in users and users[digest] != user_id:
        raise ConfigError(f"{where}: this key is already listed with user id {users[digest]!r}")
    users[digest] = user_id


def _read_keys_file(path: Path) -> list[tuple[bytes, str | None, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"Cannot read DARKROOM_API_KEYS_FILE {path}: {e.strerror}") from e
    return [
        _parse_entry(raw.strip(), f"{path} line {number}")
        for number, raw in enumerate(lines, 1)
        if raw.strip() and not raw.strip().startswith("#")
    ]


def credentials(header: str | None) -> str | None:
    """The key in ``Key <key>`` or ``Bearer <key>`` (scheme case-insensitive); None if absent/other."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("key", "bearer") or not value.strip():
        return None
    return value.strip()


def is_loopback_host(host: str) -> bool:
    """Whether a listen address only accepts local connections ("localhost", 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name may resolve to anything: treat as exposed


def check_exposure(host: str, *, has_keys: bool, open_access: bool) -> None:
    """Refuse to listen beyond loopback without keys, unless open access is explicitly asked for."""
    if has_keys or open_access or is_loopback_host(host):
        return
    raise ConfigError(
        f"Refusing to listen on {host} without API keys: anyone who can reach it could run models. "
        "Set DARKROOM_API_KEYS (or DARKROOM_API_KEYS_FILE), listen on 127.0.0.1, "
        "or set DARKROOM_OPEN_ACCESS=true to serve without keys on purpose."
    )


def hash_keys(keys: Iterable[str]) -> list[str]:
    """``sha256:<hex>`` lines for a keys file, so the file need not hold the keys themselves."""
    return [f"sha256:{_digest(k).hex()}" for k in keys]

"""API-key authentication: ``Authorization: Key <key>`` (or ``Bearer <key>``) on every non-public route.

Keys come from ``api_keys`` and ``api_keys_file`` and are kept only as sha256 digests, compared in
constant time; a key is never logged. fal's ``KEY_ID:KEY_SECRET`` form is just a key. With no key
configured the server is open, which ``check_exposure`` allows only on a loopback address (or with
``open_access``).

Public: /health, /ready, /.well-known/jwks.json, the API description (/openapi.json, /docs), and
GET/HEAD under /files/, which are capability URLs (random 128-bit ids, like fal's CDN links) so results
can be handed to browsers and other services that cannot send our key. Handlers marked
``self_authenticating`` check their own credentials (upload tokens, one-time upload URLs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import AuthError, ConfigError
from .settings import Settings

logger = logging.getLogger(__name__)

# The API description is public like fal's (it holds no secret, and a browser cannot send a key).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/.well-known/jwks.json", "/openapi.json", "/docs"})
PUBLIC_GET_PREFIX = "/files/"
_SELF_AUTH_ATTR = "_darkroom_self_authenticating"

F = TypeVar("F")


@dataclass(frozen=True)
class KeyRing:
    """sha256 digests of the accepted keys, and a per-process secret for short-lived tokens."""

    digests: frozenset[bytes]
    token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """Keys from ``api_keys`` plus ``api_keys_file``; an unreadable or malformed file is a ConfigError."""
        digests = {_digest(k) for k in _split_keys(settings.api_keys)}
        if settings.api_keys_file:
            digests |= _read_keys_file(Path(settings.api_keys_file))
        return cls(frozenset(digests))

    @property
    def open(self) -> bool:
        """No key configured: every request is let through (loopback-only unless open_access)."""
        return not self.digests

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is configured; compares against every digest so timing reveals nothing."""
        candidate = _digest(key)
        found = False
        for digest in self.digests:
            found |= hmac.compare_digest(candidate, digest)
        return found

    def issue_token(self, scope: str, ttl_s: float) -> tuple[str, float]:
        """A bearer token for ``scope`` valid ``ttl_s`` seconds, and its expiry (unix seconds)."""
        expires_at = time.time() + ttl_s
        claims = _b64(json.dumps({"scope": scope, "exp": expires_at}).encode())
        signature = _b64(hmac.new(self.token_secret, claims.encode(), hashlib.sha256).digest())
        return f"{claims}.{signature}", expires_at

    def token_scope(self, token: str) -> str | None:
        """The scope of a valid, unexpired token from ``issue_token``; None otherwise."""
        claims, _, signature = token.partition(".")
        expected = _b64(hmac.new(self.token_secret, claims.encode(), hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature, expected):
            return None
        try:
            payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        except ValueError:
            return None
        if float(payload.get("exp", 0)) <= time.time():
            return None
        scope = payload.get("scope")
        return scope if isinstance(scope, str) else None


KEYS = web.AppKey("keys", KeyRing)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _read_keys_file(path: Path) -> set[bytes]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"Cannot read DARKROOM_API_KEYS_FILE {path}: {e.strerror}") from e
    digests: set[bytes] = set()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("sha256:"):
            try:
                digest = bytes.fromhex(line.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{path} line {number}: sha256: must be followed by 64 hex digits")
            digests.add(digest)
        else:
            digests.add(_digest(line))
    return digests


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


def self_authenticating(handler: F) -> F:
    """Mark a handler that checks its own credentials (the middleware lets it through)."""
    setattr(handler, _SELF_AUTH_ATTR, True)
    return handler


def is_public(request: web.Request) -> bool:
    """Routes that need no key: health, readiness, JWKS, capability file URLs, self-authenticating."""
    # Decided by the route that matched, not the raw path, so no spelling of a path can borrow a
    # public route's exemption; unmatched paths (404/405) are not public.
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else ""
    if pattern in PUBLIC_PATHS:
        return True
    if request.method in ("GET", "HEAD") and pattern.startswith(PUBLIC_GET_PREFIX):
        return True
    return bool(getattr(request.match_info.handler, _SELF_AUTH_ATTR, False))


def has_valid_key(request: web.Request) -> bool:
    """Whether the request's Authorization names a configured key (always true when the server is open)."""
    keys = request.app[KEYS]
    if keys.open:
        return True
    key = credentials(request.headers.get("Authorization"))
    return key is not None and keys.accepts(key)


def require_key(request: web.Request) -> None:
    """Raise AuthError (401) unless the request carries a configured key."""
    if has_valid_key(request):
        return
    if credentials(request.headers.get("Authorization")) is None:
        raise AuthError("Missing API key: send the header 'Authorization: Key <your API key>'.")
    raise AuthError(
        "Invalid API key: not one of this server's keys (DARKROOM_API_KEYS, DARKROOM_API_KEYS_FILE)."
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a configured key."""
    if not is_public(request):
        require_key(request)
    return await handler(request)


def setup(app: web.Application, settings: Settings) -> None:
    """Load the keys and add the middleware (inside the error middleware, so 401s get fal's shape)."""
    app[KEYS] = KeyRing.from_settings(settings)
    app.middlewares.append(auth_middleware)
    if app[KEYS].open:
        logger.warning("no API keys configured: every request is accepted")


def hash_keys(keys: Iterable[str]) -> list[str]:
    """``sha256:<hex>`` lines for a keys file, so the file need not hold the keys themselves."""
    return [f"sha256:{_digest(k).hex()}" for k in keys]

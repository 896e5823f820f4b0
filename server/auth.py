"""Authentication: API keys on every non-public route, short-lived tokens where a key cannot be sent.

Keys come from ``api_keys`` and ``api_keys_file`` and are kept only as sha256 digests, compared in
constant time; a key is never logged. fal's ``KEY_ID:KEY_SECRET`` form is just a key. A key may name
the user id its queue requests' webhooks are signed with (``<key> <user id>``); requests with a key
that names none, and open access, use ``jobs.DEFAULT_USER_ID``. With no key configured the server is
open, which ``check_exposure`` allows only on a loopback address (or with ``open_access``).

Tokens (``server/tokens.py``): ``POST /tokens/`` (fal's realtime token call) mints an app token for a
caller with a key; a token never mints another. Browsers cannot send headers on a WebSocket, so the
WebSocket routes (``/ws``, ``/run/{app}/realtime``) check their own credentials with
``websocket_grant``: a key in ``Authorization``, or an app token as ``?fal_jwt_token=`` (or as
``Authorization: Bearer <token>``), which limits the connection to the token's apps.

Public: /health, /ready, /.well-known/jwks.json, the API description (/openapi.json, /docs), and
GET/HEAD under /files/, which are capability URLs (random 128-bit ids, like fal's CDN links) so results
can be handed to browsers and other services that cannot send our key. Handlers marked
``self_authenticating`` check their own credentials (upload tokens, one-time upload URLs, WebSockets).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from .errors import AuthError, ConfigError, ForbiddenError, RequestValidationError
from .keys import USER_ID
from .settings import Settings
from .tokens import Grant, TokenRequest, TokenSigner, app_grant, issue_app_token

logger = logging.getLogger(__name__)

# The API description is public like fal's (it holds no secret, and a browser cannot send a key).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/.well-known/jwks.json", "/openapi.json", "/docs"})
PUBLIC_GET_PREFIX = "/files/"
TOKEN_QUERY = "fal_jwt_token"
# HTTP routes a browser may call with a token in the query instead of a key: fal's JS client in
# connectionMode "client" streams this way (POST /run/{app}/stream?fal_jwt_token=...).
TOKEN_ROUTES = frozenset({"/run/{path}/stream"})
_SELF_AUTH_ATTR = "_darkroom_self_authenticating"
# Sent in the X-Fal-Webhook-User-Id header: no spaces, no control characters.
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")

F = TypeVar("F")


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys (sha256 digest -> user id or None) and the signer of short-lived tokens."""

    users: Mapping[bytes, str | None]
    tokens: TokenSigner = field(default_factory=TokenSigner.ephemeral, repr=False)

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
        """No key configured: every request is let through (loopback-only unless open_access)."""
        return not self.users

    def lookup(self, key: str) -> tuple[bool, str | None]:
        """(whether ``key`` is configured, its user id); compares every digest so timing reveals nothing."""
        candidate = _digest(key)
        found, user_id = False, None
        for digest, user in self.users.items():
            if hmac.compare_digest(candidate, digest):
                found, user_id = True, user
        return found, user_id

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is configured."""
        return self.lookup(key)[0]

    def issue_token(self, scope: str, ttl_s: float) -> tuple[str, float]:
        """A bearer token for ``scope`` valid ``ttl_s`` seconds, and its expiry (unix seconds)."""
        return self.tokens.issue(scope, ttl_s)

    def token_scope(self, token: str) -> str | None:
        """The scope of a valid, unexpired token from ``issue_token``; None otherwise."""
        return self.tokens.scope_of(token)


KEYS = web.AppKey("keys", KeyRing)


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


def self_authenticating(handler: F) -> F:
    """Mark a handler that checks its own credentials (the middleware lets it through)."""
    setattr(handler, _SELF_AUTH_ATTR, True)
    return handler


def is_public(request: web.Request) -> bool:
    """Routes that need no key: health, readiness, JWKS, capability file URLs, self-authenticating."""
    # Decided by the route that matched, not the raw path, so no spelling of a path can borrow a
    # public route's exemption; unmatched paths (404/405) are not public.
    pattern = _pattern(request)
    if pattern in PUBLIC_PATHS:
        return True
    if request.method in ("GET", "HEAD") and pattern.startswith(PUBLIC_GET_PREFIX):
        return True
    return bool(getattr(request.match_info.handler, _SELF_AUTH_ATTR, False))


def _pattern(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def has_valid_key(request: web.Request) -> bool:
    """Whether the request's Authorization names a configured key (always true when the server is open)."""
    keys = request.app[KEYS]
    if keys.open:
        return True
    key = credentials(request.headers.get("Authorization"))
    return key is not None and keys.accepts(key)


def require_key(request: web.Request) -> None:
    """Raise AuthError (401) unless the request carries a configured key; record the key's user id."""
    keys = request.app[KEYS]
    if keys.open:
        return
    key = credentials(request.headers.get("Authorization"))
    if key is None:
        raise AuthError("Missing API key: send the header 'Authorization: Key <your API key>'.")
    found, user_id = keys.lookup(key)
    if not found:
        raise AuthError(
            "Invalid API key: not one of this server's keys (DARKROOM_API_KEYS, DARKROOM_API_KEYS_FILE)."
        )
    if user_id is not None:
        request[USER_ID] = user_id


def websocket_grant(request: web.Request) -> Grant:
    """What a WebSocket handshake (or a ``TOKEN_ROUTES`` request) may do: every app with a key, the
    token's apps with an app token.

    A ``fal_jwt_token`` is checked even on an open server, so a UI meets the same scope in development
    as in production."""
    keys = request.app[KEYS]
    token = request.query.get(TOKEN_QUERY)
    if token is not None:
        grant = app_grant(keys.tokens, token)
        if grant is None:
            raise AuthError(f"Invalid or expired {TOKEN_QUERY}: mint a new one with POST /tokens/.")
        return grant
    presented = credentials(request.headers.get("Authorization"))
    if presented is not None:
        found, user_id = keys.lookup(presented)
        if found:
            return Grant(None, user_id)
        if (grant := app_grant(keys.tokens, presented)) is not None:
            return grant
    if keys.open:
        return Grant()
    if presented is not None:
        raise AuthError("Invalid credentials: neither one of this server's API keys nor a valid token.")
    raise AuthError(
        f"Missing credentials: send 'Authorization: Key <your API key>', or from a browser add "
        f"?{TOKEN_QUERY}=<token> with a token from POST /tokens/."
    )


def close_at_expiry(ws: web.WebSocketResponse, grant: Grant) -> asyncio.TimerHandle | None:
    """Close a token's socket when the token runs out (1008, "token expired"); a key's never expires.
    Cancel the handle when the socket ends first."""
    if grant.expires_at is None:
        return None

    def expire() -> None:
        task = asyncio.ensure_future(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"token expired"))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    return asyncio.get_running_loop().call_later(max(0.0, grant.expires_at - time.time()), expire)


_closing: set[asyncio.Future[bool]] = set()  # closes in flight, held so they are not collected


def require_app(grant: Grant, app_path: str) -> None:
    """403 unless the grant reaches the app."""
    if not grant.allows(app_path):
        raise ForbiddenError(
            f"This token does not allow {app_path}; it allows {grant.describe_apps()}. "
            "Mint one whose allowed_apps names the app (its alias, or owner/alias)."
        )


async def mint_token(request: web.Request) -> web.Response:
    """``POST /tokens/`` (fal's realtime token call): ``{"allowed_apps": [alias, ...],
    "token_expiration": s}`` -> the token as a bare JSON string. Needs a key (the middleware checks)."""
    try:
        body: Any = await request.json() if request.can_read_body else {}
        parsed = TokenRequest.model_validate(body)
    except ValueError as e:  # json's and pydantic's errors both are
        raise _token_request_error(e) from e
    return web.json_response(issue_app_token(request.app[KEYS].tokens, parsed, request.get(USER_ID)))


def _token_request_error(error: ValueError) -> RequestValidationError:
    if isinstance(error, ValidationError):
        return RequestValidationError.from_pydantic(error)
    return RequestValidationError(
        [{"loc": ["body"], "msg": f"Body is not valid JSON: {error}", "type": "json_invalid"}]
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a configured key (or, on TOKEN_ROUTES, an app token)."""
    if not is_public(request):
        if TOKEN_QUERY in request.query and _pattern(request) in TOKEN_ROUTES:
            _require_app_token(request)
        else:
            require_key(request)
    return await handler(request)


def _require_app_token(request: web.Request) -> None:
    grant = websocket_grant(request)
    require_app(grant, request.match_info["path"])
    if grant.user_id is not None:
        request[USER_ID] = grant.user_id


def setup(app: web.Application, settings: Settings) -> None:
    """Load the keys and the token secret, add the middleware (inside the error middleware, so 401s get
    fal's shape) and the token route."""
    app[KEYS] = KeyRing.from_settings(settings, TokenSigner.load_or_create(settings.token_secret_path))
    app.middlewares.append(auth_middleware)
    app.router.add_post("/tokens/", mint_token)
    app.router.add_post("/tokens", mint_token)
    if app[KEYS].open:
        logger.warning("no API keys configured: every request is accepted")


def hash_keys(keys: Iterable[str]) -> list[str]:
    """``sha256:<hex>`` lines for a keys file, so the file need not hold the keys themselves."""
    return [f"sha256:{_digest(k).hex()}" for k in keys]

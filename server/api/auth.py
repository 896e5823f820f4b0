"""Authentication at the HTTP edge: a key on every non-public route, short-lived tokens where a key
cannot be sent. The keys themselves live in ``server.security.keyring``.

Tokens (``server.security.tokens``): ``POST /tokens/`` (fal's realtime token call) mints an app token
for a caller with a key; a token never mints another. Browsers cannot send headers on a WebSocket, so
the WebSocket routes (``/ws``, ``/run/{app}/realtime``) check their own credentials with
``websocket_grant``: a key in ``Authorization``, or an app token as ``?fal_jwt_token=`` (or as
``Authorization: Bearer <token>``), which limits the connection to the token's apps.

Public: /health, /ready, /.well-known/jwks.json, the API description (/openapi.json, /docs), the
editor frontend's favicons, the pages' stylesheet and scripts (/static/), and GET/HEAD under /files/,
which are capability URLs (random 128-bit ids, like fal's CDN links) so results can be handed to
browsers and other services that cannot send our key. Handlers marked ``self_authenticating`` check
their own credentials (upload tokens, one-time upload URLs, WebSockets, the pages' browser session).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypeVar
from urllib.parse import quote

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler

from server.api.described import operation
from server.api.request import own_origins, read_model
from server.api.state import KEYS, SETTINGS, USER_ID
from server.errors import AuthError, DarkroomError, ForbiddenError
from server.security import sessions
from server.security.keyring import credentials
from server.security.tokens import Grant, TokenRequest, app_grant, issue_app_token

logger = logging.getLogger(__name__)

# The API description is public like fal's (it holds no secret, and a browser cannot send a key).
# So are the favicons browsers fetch without cookies (the editor's, by absolute paths).
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/.well-known/jwks.json",
        "/openapi.json",
        "/docs",
        "/favicon.ico",
        "/assets/{path}",
        "/static/{name}",
    }
)
PUBLIC_GET_PREFIX = "/files/"
TOKEN_QUERY = "fal_jwt_token"
# HTTP routes a browser may call with a token in the query instead of a key: fal's JS client in
# connectionMode "client" streams this way (POST /run/{app}/stream?fal_jwt_token=...).
TOKEN_ROUTES = frozenset({"/run/{path}/stream"})
# Routes a signed-in browser may call with its session cookie: the editor's Publish action, and what
# the playground calls (endpoint descriptions, uploads, a token for the live-events socket, cancel).
SESSION_ROUTES = ("/workflows", "/endpoints", "/storage/", "/tokens", "/queue/")
_SELF_AUTH_ATTR = "_darkroom_self_authenticating"

F = TypeVar("F")


def self_authenticating(handler: F) -> F:
    """Mark a handler that checks its own credentials (the middleware lets it through)."""
    setattr(handler, _SELF_AUTH_ATTR, True)
    return handler


def is_public(request: web.Request) -> bool:
    """Routes that need no key: health, readiness, JWKS, capability file URLs, self-authenticating."""
    # Decided by the route that matched, not the raw path, so no spelling of a path can borrow a
    # public route's exemption; unmatched paths (404/405) are not public.
    pattern = _pattern(request)
    if pattern in PUBLIC_PATHS or (pattern == "/metrics" and request.app[SETTINGS].metrics_public):
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


@operation(
    summary="Mint an app token (fal's realtime and browser token call)",
    body=TokenRequest,
    responses={200: "The token, a JSON string", 422: "Invalid body"},
    tag="tokens",
)
async def mint_token(request: web.Request) -> web.Response:
    """``POST /tokens/`` (fal's realtime token call): ``{"allowed_apps": [alias, ...],
    "token_expiration": s}`` -> the token as a bare JSON string. Needs a key (the middleware checks)."""
    parsed = await read_model(request, TokenRequest)
    return web.json_response(issue_app_token(request.app[KEYS].tokens, parsed, request.get(USER_ID)))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a configured key (or, on TOKEN_ROUTES, an app token; on
    SESSION_ROUTES, a browser session)."""
    if len(sent := request.headers.getall("Authorization", [])) > 1:
        # Proxies and servers disagree about which of several counts: refuse rather than pick one.
        raise DarkroomError(
            f"The request has {len(sent)} Authorization headers; send exactly one: 'Authorization: Key "
            "<your API key>'.",
            status=400, code="invalid_request",
        )  # fmt: skip
    pattern = _pattern(request)
    if is_public(request) or (pattern.startswith(SESSION_ROUTES) and _browser_session(request)):
        return await handler(request)
    if TOKEN_QUERY in request.query and pattern in TOKEN_ROUTES:
        _require_app_token(request)
    else:
        require_key(request)
    return await handler(request)


def _browser_session(request: web.Request) -> bool:
    """A signed-in browser's cookie, on a request from darkroom's own page (CSRF) if it changes state."""
    keys, cookie = request.app[KEYS], request.cookies.get(sessions.COOKIE)
    if request.headers.get("Authorization") or not sessions.is_valid(keys, cookie):
        return False
    origins = own_origins(request, request.app[SETTINGS])
    return sessions.same_origin(request.method, request.headers, origins)


def signed_in(request: web.Request) -> bool:
    """A browser session cookie, or open access (no keys configured)."""
    keys = request.app[KEYS]
    return keys.open or sessions.is_valid(keys, request.cookies.get(sessions.COOKIE))


def require_browser_or_key(request: web.Request, *, page: str) -> None:
    """For darkroom's pages and what they call: a key in Authorization, or a signed-in browser whose
    state-changing requests come from darkroom's own pages (CSRF). ``page`` names where to sign in."""
    if request.headers.get("Authorization"):
        require_key(request)
        return
    if not signed_in(request):
        raise AuthError(f"Sign in at /editor/login?next={page} with one of this server's API keys.")
    if not sessions.same_origin(request.method, request.headers, own_origins(request, request.app[SETTINGS])):
        raise ForbiddenError(
            f"Cross-site request refused: changes must come from darkroom's own pages ({page})."
        )


def page_access(request: web.Request, *, page: str) -> None:
    """A darkroom page: a browser that is not signed in (and sends no key) is sent to sign in and back."""
    if not signed_in(request) and not request.headers.get("Authorization"):
        raise web.HTTPSeeOther(f"/editor/login?next={quote(page, safe='/@')}")
    require_browser_or_key(request, page=page)


def _require_app_token(request: web.Request) -> None:
    grant = websocket_grant(request)
    require_app(grant, request.match_info["path"])
    if grant.user_id is not None:
        request[USER_ID] = grant.user_id


def routes() -> list[web.RouteDef]:
    """The token route (with and without fal's trailing slash)."""
    return [web.post("/tokens/", mint_token), web.post("/tokens", mint_token)]

"""Authentication at the HTTP edge: a key on every non-public route, short-lived tokens where a key
cannot be sent. The keys themselves live in ``server.security.keyring``.

Tokens (``server.security.tokens``): ``POST /tokens/`` (fal's realtime token call) mints an app token
for a caller with a key; a token never mints another. Browsers cannot send headers on a WebSocket, so
the WebSocket routes (``/ws``, ``/run/{app}/realtime``) check their own credentials with
``websocket_grant``: a key in ``Authorization``, or an app token as ``?fal_jwt_token=`` (or as
``Authorization: Bearer <token>``), which limits the connection to the token's apps.

Roles (``server.security.roles``): a handler marked ``@requires(Role.X)`` refuses a caller below X with
a 403 naming both; unmarked routes need ``runner``. A key restricted to some apps (``--apps``) is refused
other apps' run, queue and token routes with a 403. ``caller_of`` says who a request comes from.

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

from server.api.access import required_role
from server.api.described import operation
from server.api.request import own_origins, read_model
from server.api.state import CALLER, KEYS, SETTINGS, USER_ID
from server.errors import AuthError, DarkroomError, ForbiddenError
from server.security import sessions
from server.security.keyring import credentials
from server.security.roles import OPEN_CALLER, Caller
from server.security.tokens import Grant, TokenRequest, app_grant, issue_app_token, owner_alias

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
SESSION_ROUTES = ("/workflows", "/endpoints", "/storage/", "/tokens", "/queue/", "/usage")
_SELF_AUTH_ATTR = "_darkroom_self_authenticating"
# Route parameters that name an app: a key restricted to some apps is refused the others there.
_APP_PARAMS = ("path", "base")

F = TypeVar("F")


def self_authenticating(handler: F) -> F:
    """Mark a handler that checks its own credentials (the middleware lets it through)."""
    setattr(handler, _SELF_AUTH_ATTR, True)
    return handler


def caller_of(request: web.Request) -> Caller:
    """Who the request comes from (an open server's callers, and public routes, are ``OPEN_CALLER``)."""
    caller = request.get(CALLER)
    return caller if isinstance(caller, Caller) else OPEN_CALLER


def authorize(request: web.Request, caller: Caller) -> None:
    """Record who the request comes from; 403 unless its role covers the route's and its apps the app."""
    request[CALLER] = caller
    if caller.user_id is not None:
        request[USER_ID] = caller.user_id
    required = required_role(request.match_info.handler)
    if not caller.may(required):
        raise ForbiddenError(
            f"This needs a {required.value} key (or above); the key '{caller.name}' is a "
            f"{caller.role.value}. An admin can change it with 'darkroom keys create' or POST /keys."
        )
    for name in _APP_PARAMS:
        if (app_path := request.match_info.get(name)) is not None:
            require_caller_app(caller, app_path)


def require_caller_app(caller: Caller, app_path: str) -> None:
    """403 unless the caller's --apps patterns reach the app."""
    owner, alias = owner_alias(app_path)
    if not caller.allows_app(owner, alias):
        raise ForbiddenError(
            f"The key '{caller.name}' may not call {owner}/{alias}; it may call {', '.join(caller.apps)}."
        )


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
    """Raise AuthError (401) unless the request carries a valid key, else ``authorize`` its caller."""
    keys = request.app[KEYS]
    if keys.open:
        authorize(request, OPEN_CALLER)
        return
    key = credentials(request.headers.get("Authorization"))
    if key is None:
        raise AuthError("Missing API key: send the header 'Authorization: Key <your API key>'.")
    caller = keys.caller(key)
    if caller is None:
        raise AuthError(
            "Invalid API key: not one of this server's keys (DARKROOM_API_KEYS, DARKROOM_API_KEYS_FILE, "
            "or one made with 'darkroom keys create' and not revoked)."
        )
    authorize(request, caller)


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
        if (caller := keys.caller(presented)) is not None:
            return Grant(caller.apps or None, caller.user_id)
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
    caller = caller_of(request)
    for app in parsed.allowed_apps:  # a token reaches no app its key does not
        require_caller_app(caller, app if "/" in app else f"*/{app}")
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
    if is_public(request):
        return await handler(request)
    if pattern.startswith(SESSION_ROUTES) and (caller := _browser_session(request)) is not None:
        authorize(request, caller)
        return await handler(request)
    if TOKEN_QUERY in request.query and pattern in TOKEN_ROUTES:
        _require_app_token(request)
    else:
        require_key(request)
    return await handler(request)


def _browser_session(request: web.Request) -> Caller | None:
    """A signed-in browser's caller, on a request from darkroom's own page (CSRF) if it changes state."""
    keys, cookie = request.app[KEYS], request.cookies.get(sessions.COOKIE)
    if request.headers.get("Authorization") or (caller := sessions.caller(keys, cookie)) is None:
        return None
    origins = own_origins(request, request.app[SETTINGS])
    return caller if sessions.same_origin(request.method, request.headers, origins) else None


def session_caller(request: web.Request) -> Caller | None:
    """The signed-in browser's caller (its key's role as it is now), ``OPEN_CALLER`` on an open server."""
    keys = request.app[KEYS]
    return OPEN_CALLER if keys.open else sessions.caller(keys, request.cookies.get(sessions.COOKIE))


def signed_in(request: web.Request) -> bool:
    """A browser session cookie of a valid key, or open access (no keys configured)."""
    return session_caller(request) is not None


def require_browser_or_key(request: web.Request, *, page: str) -> None:
    """For darkroom's pages and what they call: a key in Authorization, or a signed-in browser whose
    state-changing requests come from darkroom's own pages (CSRF). ``page`` names where to sign in.
    Either way the caller's role must cover the route's."""
    if request.headers.get("Authorization"):
        require_key(request)
        return
    if (caller := session_caller(request)) is None:
        raise AuthError(f"Sign in at /editor/login?next={page} with one of this server's API keys.")
    if not sessions.same_origin(request.method, request.headers, own_origins(request, request.app[SETTINGS])):
        raise ForbiddenError(
            f"Cross-site request refused: changes must come from darkroom's own pages ({page})."
        )
    authorize(request, caller)


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
        if (caller := request.app[KEYS].named(grant.user_id)) is not None:
            request[CALLER] = caller  # metered and limited as its key


def routes() -> list[web.RouteDef]:
    """The token route (with and without fal's trailing slash)."""
    return [web.post("/tokens/", mint_token), web.post("/tokens", mint_token)]

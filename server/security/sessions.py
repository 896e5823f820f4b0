"""Browser sessions for the editor and darkroom's pages: a key, entered once on a sign-in page, becomes
an HttpOnly, SameSite=Strict cookie (Secure under TLS) holding a signed token that expires.

CSRF: besides SameSite=Strict, a request authenticated by the cookie that changes state must come from
darkroom's own pages: its ``Origin`` (or, without one, ``Sec-Fetch-Site: same-origin``) must be this
server's. Requests with a key in ``Authorization`` are not cookie-borne and need no such check.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from server.security.keyring import KeyRing
from server.security.roles import Caller

COOKIE = "darkroom_session"
SCOPE = "browser-session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def issue(keys: KeyRing, ttl_s: float, caller: Caller) -> tuple[str, float]:
    """A session token for ``caller``'s key and its expiry (unix seconds)."""
    return keys.issue_token(SCOPE, ttl_s, sub=caller.name)


def caller(keys: KeyRing, token: str | None) -> Caller | None:
    """Who an unexpired session token signed by this server was issued to, while that key is valid
    (a revoked key's sessions end with it; the session has the key's role as it is now)."""
    claims = keys.tokens.verify(token, SCOPE) if token is not None else None
    name = claims.get("sub") if claims is not None else None
    return keys.named(name) if isinstance(name, str) else None


def is_valid(keys: KeyRing, token: str | None) -> bool:
    """Whether ``token`` is a session of a key that is still valid."""
    return caller(keys, token) is not None


def set_cookie(response: web.StreamResponse, token: str, *, secure: bool, max_age_s: float) -> None:
    """The session cookie: scripts may not read it, no other site may send it, it lapses with the token."""
    response.set_cookie(
        COOKIE, token, max_age=int(max_age_s), path="/", secure=secure, httponly=True, samesite="Strict"
    )


def same_origin(method: str, headers: Mapping[str, str], own_origins: set[str]) -> bool:
    """Whether a cookie-borne request may have its effect: safe methods always; others only from our pages."""
    if method in SAFE_METHODS:
        return True
    origin = headers.get("Origin")
    if origin is not None:
        return origin.rstrip("/") in own_origins
    return headers.get("Sec-Fetch-Site") == "same-origin"

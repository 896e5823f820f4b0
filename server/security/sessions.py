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

COOKIE = "darkroom_session"
SCOPE = "browser-session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def issue(keys: KeyRing, ttl_s: float) -> tuple[str, float]:
    """A session token and its expiry (unix seconds)."""
    return keys.issue_token(SCOPE, ttl_s)


def is_valid(keys: KeyRing, token: str | None) -> bool:
    """Whether ``token`` is an unexpired session token signed by this server."""
    return token is not None and keys.token_scope(token) == SCOPE


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

"""Short-lived signed tokens: fal's realtime/browser tokens (``POST /tokens/``) and upload tokens.

A token is a JWT signed with HMAC-SHA256 (``alg: HS256``) under a secret kept in
``<data>/token_hmac.key`` (32 random bytes, mode 0600, made on first start like the webhook key), so
tokens survive a restart and every process sharing the data directory agrees on them. Each token
names its ``scope``; a check always asks for one scope, so a token minted for one purpose (uploads)
never passes for another (apps). App tokens (scope ``apps``) carry fal's ``allowed_apps`` and the user
id of the key that minted them. Nothing here knows about HTTP: ``server/api/auth.py`` decides who may
mint and where a token is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from server.json_types import JsonInt
from server.security import secret_files

logger = logging.getLogger(__name__)

SECRET_BYTES = 32
ISSUER = "darkroom"
APPS_SCOPE = "apps"
TOKEN_MIN_TTL_S = 1
TOKEN_MAX_TTL_S = 3600
MAX_ALLOWED_APPS = 100
NAMESPACES = frozenset({"workflows", "comfy"})  # fal's app-id prefixes before owner/alias
_HEADER = {"alg": "HS256", "typ": "JWT"}

AppName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._/-]+$")]


class TokenRequest(BaseModel):
    """fal's body for ``POST /tokens/``: the apps the token may reach, and its lifetime in seconds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    allowed_apps: list[AppName] = Field(min_length=1, max_length=MAX_ALLOWED_APPS)
    token_expiration: JsonInt = Field(default=120, ge=TOKEN_MIN_TTL_S, le=TOKEN_MAX_TTL_S)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_part(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


class TokenSigner:
    """Issues and checks HS256 JWTs under one secret; ``clock`` is injectable for tests."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"token secret must be {SECRET_BYTES} bytes, got {len(secret)}")
        self._secret = secret
        self.clock = clock

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    @classmethod
    def ephemeral(cls) -> TokenSigner:
        """A signer with a random secret that lives as long as the object (offline checks, tests)."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load_or_create(cls, path: Path, *, database_url: str = "") -> TokenSigner:
        """The secret in ``path`` (32 raw bytes, mode 0600), generated on first use (a fleet's: in its
        database)."""
        return cls(
            secret_files.load_or_create(
                path, SECRET_BYTES, what="a token secret", on_delete="tokens issued before then stop working",
                database_url=database_url,
            )
        )  # fmt: skip

    def issue(self, scope: str, ttl_s: float, **claims: Any) -> tuple[str, float]:
        """A token for ``scope`` valid ``ttl_s`` seconds with extra ``claims``, and its expiry (unix s)."""
        now = self.clock()
        expires_at = round(now + ttl_s, 3)
        payload = {**claims, "iss": ISSUER, "scope": scope, "iat": int(now), "exp": expires_at}
        signing_input = f"{_json_part(_HEADER)}.{_json_part(payload)}"
        return f"{signing_input}.{self._sign(signing_input)}", expires_at

    def verify(self, token: str, scope: str) -> dict[str, Any] | None:
        """The claims of a well-signed, unexpired token of ``scope``; None for anything else."""
        claims = self._claims(token)
        return claims if claims is not None and claims.get("scope") == scope else None

    def scope_of(self, token: str) -> str | None:
        """The scope of a well-signed, unexpired token; None for anything else."""
        claims = self._claims(token)
        scope = claims.get("scope") if claims is not None else None
        return scope if isinstance(scope, str) else None

    def _claims(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(parts[2].encode(), self._sign(signing_input).encode()):
            return None
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return None
        if header != _HEADER or not isinstance(claims, dict):
            return None
        expires_at = claims.get("exp")
        if not isinstance(expires_at, (int, float)) or expires_at <= self.clock():
            return None
        return claims

    def _sign(self, signing_input: str) -> str:
        return _b64(hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest())


def owner_alias(app_path: str) -> tuple[str, str]:
    """fal's (owner, alias) of an app path: ``owner/alias[@version][/subpath]``, after a workflows/ or comfy/
    prefix. A published workflow's pinned version (``@n``) has its app's alias, so a token for the app
    reaches its versions."""
    parts = app_path.strip("/").split("/")
    if parts[0] in NAMESPACES:
        parts = parts[1:]
    owner, alias = (parts[0], parts[1]) if len(parts) >= 2 else ("", parts[0])
    return owner, alias.split("@", 1)[0]


@dataclass(frozen=True)
class Grant:
    """What one credential may do: ``apps`` None means every app (an API key); ``user_id`` None means
    the default user (a key without one, or open access)."""

    apps: tuple[str, ...] | None = None
    user_id: str | None = None
    expires_at: float | None = None  # unix seconds; None for a key, which does not expire

    def allows(self, app_path: str) -> bool:
        """fal scopes tokens by alias (``allowed_apps: ["flux-2"]``); ``owner/alias`` pins the owner too.
        A managed key's --apps patterns (shell wildcards) reach its sockets the same way."""
        if self.apps is None:
            return True
        owner, alias = owner_alias(app_path)
        return any(fnmatchcase(alias, e) or fnmatchcase(f"{owner}/{alias}", e) for e in self.apps)

    def describe_apps(self) -> str:
        return "every app" if self.apps is None else ", ".join(self.apps)


def issue_app_token(signer: TokenSigner, request: TokenRequest, user_id: str | None) -> str:
    """A token for fal's realtime and browser clients: the request's apps, on behalf of ``user_id``."""
    claims: dict[str, Any] = {"allowed_apps": list(dict.fromkeys(request.allowed_apps))}
    if user_id is not None:
        claims["sub"] = user_id
    token, _ = signer.issue(APPS_SCOPE, request.token_expiration, **claims)
    return token


def app_grant(signer: TokenSigner, token: str) -> Grant | None:
    """The grant an app token carries, or None if it is not a valid, unexpired app token."""
    claims = signer.verify(token, APPS_SCOPE)
    if claims is None:
        return None
    apps, user_id = claims.get("allowed_apps"), claims.get("sub")
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        return None
    if user_id is not None and not isinstance(user_id, str):
        return None
    return Grant(tuple(apps), user_id, float(claims["exp"]))

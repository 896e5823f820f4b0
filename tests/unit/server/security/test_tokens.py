"""Short-lived tokens: signing, expiry, scope, tampering, the persisted secret, grants, the body."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.errors import ConfigError
from server.security.tokens import (
    APPS_SCOPE,
    Grant,
    TokenRequest,
    TokenSigner,
    app_grant,
    issue_app_token,
    owner_alias,
)


class Clock:
    def __init__(self, now_s: float = 1_700_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def signer(clock: Clock | None = None, secret: bytes = b"s" * 32) -> TokenSigner:
    return TokenSigner(secret, clock=clock or Clock())


def parts(token: str) -> list[dict[str, object]]:
    return [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2]]


def encode(value: dict[str, object]) -> str:
    raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_token_is_an_hs256_jwt_with_scope_and_expiry() -> None:
    clock = Clock()
    token, expires_at = signer(clock).issue("apps", 120, allowed_apps=["demo"])
    header, claims = parts(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims["scope"] == "apps" and claims["allowed_apps"] == ["demo"] and claims["iss"] == "darkroom"
    assert expires_at == claims["exp"] == clock.now_s + 120 and claims["iat"] == int(clock.now_s)
    assert signer(clock).verify(token, "apps") == claims


def test_expiry_is_checked_against_the_clock() -> None:
    clock = Clock()
    token, _ = signer(clock).issue("apps", 120)
    clock.now_s += 119.9
    assert signer(clock).verify(token, "apps") is not None
    clock.now_s += 0.1
    assert signer(clock).verify(token, "apps") is None


def test_a_token_passes_only_for_its_own_scope() -> None:
    upload, _ = signer().issue("storage:upload", 60)
    assert signer().verify(upload, "storage:upload") is not None
    assert signer().verify(upload, APPS_SCOPE) is None
    assert signer().scope_of(upload) == "storage:upload"
    assert app_grant(signer(), upload) is None


def test_tampered_or_foreign_tokens_are_refused() -> None:
    token, _ = signer().issue("apps", 60, allowed_apps=["demo"])
    header, payload, signature = token.split(".")
    claims = parts(token)[1]
    widened = encode({**claims, "allowed_apps": ["other"]})
    unsigned = encode({"alg": "none", "typ": "JWT"})
    for bad in (
        f"{header}.{widened}.{signature}",  # claims changed, old signature
        f"{header}.{payload}.{signature[::-1]}",
        f"{unsigned}.{payload}.",  # alg none
        f"{unsigned}.{payload}.{signature}",  # the signature covers the header too
        f"{header}.{payload}",
        f"{token}.extra",
        "garbage",
        "",
        "é.é.é",  # not ASCII: refused, not an exception
    ):
        assert signer().verify(bad, "apps") is None, bad
        assert signer().scope_of(bad) is None, bad
    assert signer(secret=b"t" * 32).verify(token, "apps") is None  # another server's secret


def test_a_well_signed_token_with_a_wrong_header_or_claims_is_refused() -> None:
    other = signer()
    token, _ = other.issue("apps", 60, allowed_apps="demo")  # a string, not a list of apps
    assert other.verify(token, "apps") is not None and app_grant(other, token) is None
    token, _ = other.issue("apps", 60, allowed_apps=["demo"], sub=7)
    assert app_grant(other, token) is None


def test_the_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token_hmac.key"
    first = TokenSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    token, _ = first.issue("apps", 60)
    assert TokenSigner.load_or_create(path).verify(token, "apps") is not None  # a restart, another worker
    assert "token_hmac" not in repr(first) and path.read_bytes().hex() not in repr(first)


def test_a_damaged_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "token_hmac.key"
    path.write_bytes(b"short")
    with pytest.raises(
        ConfigError, match=r"token_hmac\.key is not a token secret \(expected 32 bytes, got 5\)"
    ):
        TokenSigner.load_or_create(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("darkroom/demo-flux-2", ("darkroom", "demo-flux-2")),
        ("fal-ai/flux-2/lora", ("fal-ai", "flux-2")),
        ("comfy/me/graph/sub", ("me", "graph")),
        ("/workflows/me/flow/", ("me", "flow")),
        ("alone", ("", "alone")),
        ("me/flow@3", ("me", "flow")),  # a published workflow's pinned version
    ],
)
def test_owner_alias_follows_fals_app_id(path: str, expected: tuple[str, str]) -> None:
    assert owner_alias(path) == expected


def test_grants_match_by_alias_or_owner_and_alias() -> None:
    by_alias = Grant(("flux-2",))
    assert by_alias.allows("fal-ai/flux-2") and by_alias.allows("fal-ai/flux-2/lora")
    assert by_alias.allows("someone/flux-2")  # fal's aliases belong to the token holder's own apps
    assert not by_alias.allows("fal-ai/flux") and not by_alias.allows("flux-2/other")
    pinned = Grant(("darkroom/demo-flux-2",))
    assert pinned.allows("darkroom/demo-flux-2") and not pinned.allows("other/demo-flux-2")
    assert Grant().allows("anything/at-all") and Grant().describe_apps() == "every app"
    assert Grant(("me/flow",)).allows("me/flow@2") and not Grant(("me/flow",)).allows("me/flower@2")


def test_app_tokens_carry_the_apps_and_the_minting_user() -> None:
    clock = Clock()
    request = TokenRequest(allowed_apps=["demo-flux-2", "demo-flux-2", "x/y"], token_expiration=30)
    token = issue_app_token(signer(clock), request, "alice")
    expires_at = clock.now_s + 30  # the socket of a token closes then
    assert app_grant(signer(clock), token) == Grant(("demo-flux-2", "x/y"), "alice", expires_at)
    anonymous = issue_app_token(signer(clock), TokenRequest(allowed_apps=["demo"]), None)
    assert app_grant(signer(clock), anonymous) == Grant(("demo",), None, clock.now_s + 120)  # the default
    clock.now_s += 30
    assert app_grant(signer(clock), token) is None


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ("allowed_apps",)),
        ({"allowed_apps": []}, ("allowed_apps",)),
        ({"allowed_apps": "demo"}, ("allowed_apps",)),
        ({"allowed_apps": ["has space"]}, ("allowed_apps", 0)),
        ({"allowed_apps": [""]}, ("allowed_apps", 0)),
        ({"allowed_apps": ["demo"], "token_expiration": 0}, ("token_expiration",)),
        ({"allowed_apps": ["demo"], "token_expiration": 3601}, ("token_expiration",)),
        ({"allowed_apps": ["demo"], "token_expiration": "soon"}, ("token_expiration",)),
        ({"allowed_apps": ["demo"], "scopes": ["all"]}, ("scopes",)),
    ],
)
def test_token_request_validation(body: dict[str, object], loc: tuple[object, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        TokenRequest.model_validate(body)
    assert caught.value.errors()[0]["loc"] == loc


def test_token_request_defaults_to_fals_two_minutes() -> None:
    assert TokenRequest.model_validate({"allowed_apps": ["demo"]}).token_expiration == 120

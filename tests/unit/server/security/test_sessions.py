"""Browser sessions: signed tokens that expire, and the same-origin rule for cookie-borne writes."""

from __future__ import annotations

import pytest

from server.security import sessions
from server.security.keyring import KeyRing, digest_of
from server.security.tokens import TokenSigner

OWN = {"https://darkroom.example", "http://127.0.0.1:8000"}


def test_a_session_token_is_valid_until_it_expires() -> None:
    now = [1000.0]
    keys = KeyRing({digest_of("k"): "alice"}, TokenSigner(b"s" * 32, clock=lambda: now[0]))
    alice = keys.caller("k")
    assert alice is not None
    token, expires_at = sessions.issue(keys, 60, alice)
    assert sessions.is_valid(keys, token) and expires_at == 1060.0
    assert sessions.caller(keys, token) == alice
    now[0] = 1061.0
    assert not sessions.is_valid(keys, token)
    assert not sessions.is_valid(keys, None) and not sessions.is_valid(keys, "forged")
    upload_token, _ = keys.issue_token("storage:upload", 60)
    now[0] = 1000.0
    assert not sessions.is_valid(keys, upload_token), "another scope's token is no session"


@pytest.mark.parametrize(
    ("method", "headers", "allowed"),
    [
        ("GET", {"Origin": "https://evil.example"}, True),  # reads change nothing
        ("POST", {"Origin": "https://darkroom.example"}, True),
        ("POST", {"Origin": "https://darkroom.example/"}, True),
        ("POST", {"Origin": "https://evil.example"}, False),
        ("POST", {"Origin": "null"}, False),
        ("DELETE", {"Sec-Fetch-Site": "same-origin"}, True),
        ("DELETE", {"Sec-Fetch-Site": "cross-site"}, False),
        ("PUT", {}, False),
    ],
)
def test_cookie_borne_writes_must_come_from_our_pages(
    method: str, headers: dict[str, str], allowed: bool
) -> None:
    assert sessions.same_origin(method, headers, OWN) is allowed

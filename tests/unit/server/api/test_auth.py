"""API keys: parsing, hashed comparison, tokens, the exposure decision, and the middleware in-process."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server import cli
from server.api.state import USER_ID
from server.app import create_app
from server.errors import ConfigError
from server.security.keyring import KeyRing, check_exposure, credentials, hash_keys, is_loopback_host
from server.settings import load_settings
from tests.fakes import IdleSupervisor


def keyring(tmp_path: Path, keys: str = "", file_text: str | None = None) -> KeyRing:
    keys_file = ""
    if file_text is not None:
        keys_file = str(tmp_path / "keys.txt")
        Path(keys_file).write_text(file_text)
    return KeyRing.from_settings(load_settings({}, api_keys=keys, api_keys_file=keys_file))


def test_keys_from_the_setting_and_the_file(tmp_path: Path) -> None:
    hashed = hashlib.sha256(b"hashed-key").hexdigest()
    ring = keyring(tmp_path, " alpha , id-1:secret-1,", f"# comment\n\nfile-key\nsha256:{hashed}\n")
    for key in ("alpha", "id-1:secret-1", "file-key", "hashed-key"):
        assert ring.accepts(key), key
    for key in ("", "alph", "id-1", "secret-1", "sha256:" + hashed, "ALPHA"):
        assert not ring.accepts(key), key
    assert not ring.open and keyring(tmp_path).open


def test_only_digests_are_kept(tmp_path: Path) -> None:
    ring = keyring(tmp_path, "super-secret-key")
    assert "super-secret-key" not in repr(ring)
    assert all(len(d) == 32 for d in ring.digests)
    assert "super-secret-key" not in repr(load_settings({}, api_keys="super-secret-key"))


def test_a_key_is_compared_with_every_digest_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a key matches, and which, must not show in the time taken: every lookup hashes the key
    and compares its digest with every configured digest by hmac.compare_digest (spied on here, the
    real one still deciding), all of the same length, with no early exit on a match."""
    ring = keyring(
        tmp_path, "first-key, middle-key", f"last-key\nsha256:{hashlib.sha256(b'h').hexdigest()}\n"
    )
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for key in ("first-key", "last-key", "h", "wrong", "", "x" * 10_000):
        compared.clear()
        ring.lookup(key)
        assert compared == [(32, 32)] * 4, (key, compared)


def test_bad_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2: sha256: must be followed by 64 hex digits"):
        keyring(tmp_path, file_text="ok\nsha256:abc\n")
    with pytest.raises(ConfigError, match="Cannot read DARKROOM_API_KEYS_FILE"):
        KeyRing.from_settings(load_settings({}, api_keys_file=str(tmp_path / "absent")))


def test_a_key_may_name_its_user(tmp_path: Path) -> None:
    hashed = hashlib.sha256(b"carol-key").hexdigest()
    ring = keyring(
        tmp_path,
        "alice-key alice, plain-key, id-1:secret-1 org.team@x",
        f"bob-key  bob\nsha256:{hashed} carol\nalice-key alice\n",
    )
    assert ring.lookup("alice-key") == (True, "alice")
    assert ring.lookup("plain-key") == (True, None)
    assert ring.lookup("id-1:secret-1") == (True, "org.team@x")
    assert ring.lookup("bob-key") == (True, "bob") and ring.lookup("carol-key") == (True, "carol")
    assert ring.lookup("alice") == (False, None) and ring.lookup("alice-key alice") == (False, None)


@pytest.mark.parametrize(
    ("keys", "file_text", "message"),
    [
        ("k bad/id", None, "DARKROOM_API_KEYS entry 1: user id 'bad/id' must"),
        ("k a b", None, "DARKROOM_API_KEYS entry 1: expected '<key>' or '<key> <user id>', got 3 words"),
        ("ok, k -dash", None, "entry 2: user id '-dash' must be 1-128 of letters"),
        ("k alice", "k bob\n", "line 1: this key is already listed with user id 'alice'"),
        ("", "k\nsha256:00 x\n", "line 2: sha256: must be followed by 64 hex digits"),
    ],
)
def test_bad_user_ids_are_config_errors(
    tmp_path: Path, keys: str, file_text: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        keyring(tmp_path, keys, file_text)


def test_hash_keys_lines_are_accepted_by_the_file_reader(tmp_path: Path) -> None:
    ring = keyring(tmp_path, file_text="\n".join(hash_keys(["k1", "k2"])))
    assert ring.accepts("k1") and ring.accepts("k2") and not ring.accepts("k3")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Key abc", "abc"),
        ("key id:secret", "id:secret"),
        ("Bearer tok", "tok"),
        ("  Key   spaced  ", "spaced"),
        ("Basic abc", None),
        ("Key", None),
        ("Key ", None),
        ("", None),
        (None, None),
    ],
)
def test_credentials(header: str | None, key: str | None) -> None:
    assert credentials(header) == key


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("myhost.example", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_exposure_decision() -> None:
    check_exposure("127.0.0.1", has_keys=False, open_access=False)
    check_exposure("0.0.0.0", has_keys=True, open_access=False)
    check_exposure("0.0.0.0", has_keys=False, open_access=True)
    with pytest.raises(
        ConfigError, match=r"0\.0\.0\.0 without API keys.*DARKROOM_API_KEYS.*DARKROOM_OPEN_ACCESS"
    ):
        check_exposure("0.0.0.0", has_keys=False, open_access=False)


def test_serve_refuses_before_binding(tmp_path: Path) -> None:
    exposed = load_settings({}, host="0.0.0.0", data_dir=str(tmp_path), comfyui_dir=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="without API keys"):
        asyncio.run(cli.serve(exposed))
    half_tls = load_settings({}, data_dir=str(tmp_path), tls_cert=str(tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        asyncio.run(cli.serve(half_tls))
    missing = load_settings({}, tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="Cannot load TLS certificate"):
        cli.tls_context(missing)


def test_tokens_carry_scope_and_expire(tmp_path: Path) -> None:
    ring = keyring(tmp_path, "k")
    token, _ = ring.issue_token("storage:upload", 60)
    assert ring.token_scope(token) == "storage:upload"
    expired, _ = ring.issue_token("storage:upload", -1)
    assert ring.token_scope(expired) is None
    claims, _, signature = token.partition(".")
    assert ring.token_scope(claims + "." + signature[::-1]) is None
    assert ring.token_scope("garbage") is None
    assert keyring(tmp_path, "k").token_scope(token) is None  # another process's secret


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Key wrong"}, 401),
        ({"Authorization": "Basic dXNlcg=="}, 401),
        ({"Authorization": "Key right"}, 200),
        ({"Authorization": "Bearer right"}, 200),
        ({"Authorization": "Key kid:ksecret"}, 200),
    ],
)
async def test_middleware(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, headers: dict[str, str], status: int
) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys="right,kid:ksecret")
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    app.router.add_get("/private", hello)
    caplog.set_level(logging.DEBUG)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/private", headers=headers)
        assert response.status == status
        if status == 401:
            body = await response.json()
            assert body["error_type"] == "unauthorized" and "API key" in body["detail"]
            assert response.headers["x-fal-error-type"] == "unauthorized"
            assert response.headers["x-fal-request-id"]
        for public in ("/health", "/ready", "/files/abc/missing.png"):
            assert (await client.get(public)).status != 401, public
    for secret in ("wrong", "ksecret", "right"):
        assert not any(secret in r.getMessage() for r in caplog.records), "keys are never logged"


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"user_id": request.get(USER_ID)})


async def test_the_middleware_records_the_keys_user(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys="alice-key alice,plain-key")
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    app.router.add_get("/whoami", whoami)
    async with TestClient(TestServer(app)) as client:
        for key, user_id in (("alice-key", "alice"), ("plain-key", None)):
            response = await client.get("/whoami", headers={"Authorization": f"Key {key}"})
            assert await response.json() == {"user_id": user_id}


async def test_no_keys_means_open(tmp_path: Path) -> None:
    app = create_app(
        load_settings({}, data_dir=str(tmp_path)), IdleSupervisor(ready=True), run_supervisor=False
    )  # type: ignore[arg-type]
    app.router.add_get("/private", hello)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/private")).status == 200


async def test_public_is_decided_by_the_matched_route(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys="right")
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    app.router.add_get("/private", hello)
    async with TestClient(TestServer(app)) as client:
        for path in ("/files//../private", "/files/%2e%2e/private", "/health/../private", "/no/such/route"):
            assert (await client.get(path)).status == 401, path
        assert (await client.post("/health")).status == 401  # a public path, but no public route matched

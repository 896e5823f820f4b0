"""fal's storage API in-process: initiate + PUT, the v3 token + POST flow, limits, capability URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from server.app import create_app
from server.media.uploads import safe_name
from server.settings import Settings, load_settings
from tests.fakes import IdleSupervisor

KEY = {"Authorization": "Key test-id:test-secret"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys="test-id:test-secret", upload_max_bytes=1000)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def path_of(url: str) -> str:
    return URL(url).path


async def initiate(client: TestClient[web.Request, web.Application], **body: Any) -> dict[str, Any]:
    response = await client.post("/storage/upload/initiate?storage_type=fal-cdn-v3", json=body, headers=KEY)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_initiate_then_put_then_get(
    client: TestClient[web.Request, web.Application], settings: Settings
) -> None:
    urls = await initiate(client, file_name="cat.png", content_type="image/png")
    assert urls["upload_url"].startswith(f"http://{client.host}:{client.port}/files/uploads/")
    assert urls["file_url"].endswith("/cat.png")
    put = await client.put(
        path_of(urls["upload_url"]), data=b"\x89PNG\r\n\x1a\nfake", headers={"Content-Type": "image/png"}
    )
    assert put.status == 200 and put.headers["x-fal-request-id"]
    got = await client.get(path_of(urls["file_url"]))  # no key: a capability URL
    assert got.status == 200 and await got.read() == b"\x89PNG\r\n\x1a\nfake"
    assert got.headers["Content-Type"] == "image/png"
    assert list(settings.uploads_path.glob("*/*")) == [
        settings.uploads_path / path_of(urls["file_url"]).split("/")[3] / "cat.png"
    ]
    again = await client.put(path_of(urls["upload_url"]), data=b"other")
    assert again.status == 404, "an upload URL takes one PUT"


async def test_a_range_past_the_end_or_not_one_range_is_our_416(
    client: TestClient[web.Request, web.Application],
) -> None:
    """aiohttp answers these with an empty 416 typed as the file; the fuzz drill found it undocumented.
    They get the error body a shared store gives (tests/facade/test_files_shared.py), as outputs do."""
    urls = await initiate(client, file_name="cat.png", content_type="image/png")
    assert (await client.put(path_of(urls["upload_url"]), data=b"0123456789")).status == 200
    file_path = path_of(urls["file_url"])
    for good, body in (("bytes=2-4", b"234"), ("bytes=-3", b"789"), ("bytes=8-", b"89")):
        ranged = await client.get(file_path, headers={"Range": good})
        assert ranged.status == 206 and await ranged.read() == body, good
    for bad, words in (("bytes=10-", "past the end of cat.png"), ("bytes=5-2", "not one byte range")):
        refused = await client.get(file_path, headers={"Range": bad})
        assert refused.status == 416 and refused.headers["Content-Type"].startswith("application/json")
        assert refused.headers["Content-Range"] == "bytes */10"
        error = await refused.json()
        assert error["error_type"] == "range_not_satisfiable" and words in error["detail"], (bad, error)


async def test_upload_urls_are_unguessable(client: Client) -> None:
    """An upload is served without a key at /files/uploads/<id>/<name>: the id is 128 random bits
    (32 hex digits from `secrets`), a new one for each upload, whichever way it was made."""
    ids = [path_of((await initiate(client, file_name="a.png"))["file_url"]).split("/")[3] for _ in range(3)]
    token = await (
        await client.post("/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers=KEY)
    ).json()
    posted = await client.post(
        "/files/upload", data=b"x", headers={"Authorization": f"Bearer {token['token']}"}
    )
    ids.append(path_of((await posted.json())["access_url"]).split("/")[3])
    assert all(re.fullmatch(r"[0-9a-f]{32}", upload_id) for upload_id in ids), ids
    assert len(set(ids)) == len(ids)


async def test_initiate_needs_a_key_but_put_does_not(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post("/storage/upload/initiate", json={"content_type": "text/plain"})
    assert response.status == 401
    unknown = await client.put(f"/files/uploads/{'a' * 32}/x.txt", data=b"x")
    assert unknown.status == 404 and "initiate one first" in (await unknown.json())["detail"]


async def test_v3_token_then_post(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers=KEY)
    assert response.status == 200
    token = await response.json()
    assert token["token_type"] == "Bearer" and token["base_url"] == f"http://{client.host}:{client.port}"
    expires_at = datetime.fromisoformat(token["expires_at"])
    assert token["expires_at"].endswith("+00:00") and expires_at > datetime.now(UTC)
    upload = await client.post(
        "/files/upload",
        data=b"hello",
        headers={
            "Authorization": f"Bearer {token['token']}",
            "Content-Type": "text/plain",
            "X-Fal-File-Name": "../../notes.txt",
        },
    )
    assert upload.status == 200, await upload.text()
    body = await upload.json()
    assert body["access_url"].endswith("/notes.txt") and body["file_size"] == 5
    got = await client.get(path_of(body["access_url"]))
    # Not an image, video or audio file by its bytes: an attachment, whatever type the upload claimed.
    assert await got.read() == b"hello" and got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == "attachment; filename*=UTF-8''notes.txt"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer forged.token"}, 401), (KEY, 200)],
)
async def test_cdn_upload_accepts_a_token_or_a_key(
    client: TestClient[web.Request, web.Application], headers: dict[str, str], status: int
) -> None:
    response = await client.post("/files/upload", data=b"x", headers={**headers, "Content-Type": "image/png"})
    assert response.status == status
    if status == 200:
        assert (await response.json())["access_url"].endswith("/upload.png")


async def test_size_limit_declared_and_streamed(
    client: TestClient[web.Request, web.Application], settings: Settings
) -> None:
    declared = await client.post("/files/upload", data=b"x" * 1001, headers=KEY)
    assert declared.status == 413
    assert (await declared.json())["error_type"] == "file_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 400  # chunked, no Content-Length

    urls = await initiate(client, file_name="big.bin")
    streamed = await client.put(path_of(urls["upload_url"]), data=chunks())
    assert streamed.status == 413
    assert [p for p in settings.uploads_path.rglob("*") if p.is_file()] == [], "no partial file is left"


async def test_storage_quota_is_507_when_full_and_413_past_it(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), api_keys="test-id:test-secret", storage_quota_bytes=1000
    )
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        first = await client.post("/files/upload", data=b"a" * 700, headers=KEY)
        assert first.status == 200, await first.text()
        full = await client.post("/files/upload", data=b"b" * 400, headers=KEY)
        assert full.status == 507 and full.headers["Retry-After"] == "60"
        body = await full.json()
        assert body["error_type"] == "storage_full" and "700 of 1000 bytes" in body["detail"]
        never = await client.post("/files/upload", data=b"c" * 1200, headers=KEY)
        assert never.status == 413 and "whole storage quota" in (await never.json())["detail"]
        assert len([p for p in settings.uploads_path.rglob("*") if p.is_file()]) == 1, "nothing half-written"
        fits = await client.post("/files/upload", data=b"d" * 300, headers=KEY)
        assert fits.status == 200


async def test_bad_requests_are_422(client: TestClient[web.Request, web.Application]) -> None:
    bad_type = await client.post("/storage/upload/initiate?storage_type=s3", json={}, headers=KEY)
    assert bad_type.status == 422 and (await bad_type.json())["detail"][0]["loc"] == ["query", "storage_type"]
    bad_json = await client.post(
        "/storage/auth/token", data=b"{nope", headers={**KEY, "Content-Type": "application/json"}
    )
    assert bad_json.status == 422 and (await bad_json.json())["detail"][0]["type"] == "json_invalid"
    bad_field = await client.post("/storage/upload/initiate", json={"content_type": 5}, headers=KEY)
    assert bad_field.status == 422 and (await bad_field.json())["detail"][0]["loc"] == [
        "body",
        "content_type",
    ]


async def test_public_url_shapes_returned_urls(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), public_url="https://media.example/")
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        urls = await initiate(client, file_name="a.png", content_type="image/png")
    assert urls["file_url"].startswith("https://media.example/files/uploads/")


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("cat.png", "image/png", "cat.png"),
        ("../../etc/passwd", "text/plain", "passwd.txt"),
        ("C:\\x\\evil name!.jpg", "image/jpeg", "evil_name_.jpg"),
        (None, "image/webp", "upload.webp"),
        ("", "application/octet-stream", "upload.bin"),
        (".hidden", "image/png", "hidden.png"),
        ("x.part", "text/plain", "x.txt"),
        ("lora.safetensors", "application/octet-stream", "lora.safetensors"),
        ("notes.txt", "image/png", "notes.txt.png"),
    ],
)
def test_safe_name(name: str | None, content_type: str, expected: str) -> None:
    assert safe_name(name, content_type) == expected

"""Multipart uploads in-process: both SDK flows, part order and re-sends, limits, errors, sweeping."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from server.api.state import MULTIPART
from server.app import create_app
from server.media.multipart import MultipartStore
from server.settings import Settings, load_settings
from tests.fakes import IdleSupervisor

KEY = {"Authorization": "Key test-id:test-secret"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys="test-id:test-secret", upload_max_bytes=1000)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def path_of(url: str) -> str:
    return URL(url).path


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


async def python_start(client: Client, name: str = "weights.safetensors") -> tuple[str, str]:
    """fal_client's MultipartUpload.create: a v3 token, then POST /files/upload/multipart."""
    token = await (
        await client.post("/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers=KEY)
    ).json()
    response = await client.post(
        "/files/upload/multipart",
        headers={
            "Authorization": f"Bearer {token['token']}",
            "Content-Type": "application/octet-stream",
            "X-Fal-File-Name": name,
        },
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    return body["access_url"], body["uploadId"]


async def js_start(client: Client, name: str = "clip.mp4") -> dict[str, str]:
    response = await client.post(
        "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        json={"content_type": "video/mp4", "file_name": name},
        headers=KEY,
    )
    assert response.status == 200, await response.text()
    urls: dict[str, str] = await response.json()
    return urls


async def put(client: Client, url: str, data: Any) -> tuple[int, dict[str, Any], str | None]:
    response = await client.put(path_of(url), data=data)
    return response.status, await response.json(), response.headers.get("ETag")


async def complete(client: Client, url: str, parts: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    response = await client.post(path_of(url), json={"parts": parts})
    return response.status, await response.json()


def leftovers(settings: Settings) -> list[str]:
    return sorted(
        str(p.relative_to(settings.uploads_path)) for p in settings.uploads_path.rglob("*") if p.is_file()
    )


async def test_python_flow_any_order_resent_part_wins(client: Client, settings: Settings) -> None:
    access_url, upload_id = await python_start(client)
    assert access_url.endswith("/weights.safetensors") and len(upload_id) == 32
    base = f"{access_url}/multipart/{upload_id}"
    chunks = {1: b"a" * 300, 2: b"b" * 300, 3: b"c" * 100}
    etags: dict[int, str] = {}
    for number in (3, 2, 1):
        status, body, etag = await put(
            client, f"{base}/{number}", chunks[number] if number != 2 else b"stale"
        )
        assert status == 200 and etag == md5_etag(chunks[number] if number != 2 else b"stale")
        assert body == {"partNumber": number, "etag": etag, "size": len(chunks[number]) if number != 2 else 5}
        etags[number] = etag
    status, _, etags[2] = await put(client, f"{base}/2", chunks[2])  # re-sent: the last one wins
    assert status == 200 and etags[2] == md5_etag(chunks[2])
    assert (await client.get(path_of(access_url))).status == 404, "nothing is visible before complete"

    listed = [{"partNumber": n, "etag": etags[n]} for n in (2, 3, 1)]  # fal_client lists them as they finish
    status, body = await complete(client, f"{base}/complete", listed)
    assert status == 200 and body["file_size"] == 700 and body["access_url"] == access_url
    got = await client.get(path_of(access_url))
    assert got.status == 200 and await got.read() == chunks[1] + chunks[2] + chunks[3]
    upload_dir = path_of(access_url).split("/")[3]
    assert leftovers(settings) == [f"{upload_dir}/weights.safetensors"], "parts are gone once joined"

    assert await complete(client, f"{base}/complete", listed) == (200, body), (
        "a retried complete answers again"
    )
    status, error = await complete(client, f"{base}/complete", listed[:1])
    assert status == 400 and "already completed" in error["detail"]
    status, error, _ = await put(client, f"{base}/4", b"late")
    assert status == 400 and error["error_type"] == "invalid_part" and "no more parts" in error["detail"]


async def test_js_flow_parts_answer_json(client: Client) -> None:
    urls = await js_start(client)
    assert urls["upload_url"].startswith(urls["file_url"] + "/multipart/")
    parts = []
    for number, data in ((1, b"x" * 10), (2, b"y" * 5)):
        status, body, _ = await put(client, f"{urls['upload_url']}/{number}", data)  # no key, as the SDK
        assert status == 200
        parts.append({"partNumber": body["partNumber"], "etag": body["etag"]})
    status, body = await complete(client, f"{urls['upload_url']}/complete", parts)
    assert status == 200 and body["file_url"] == urls["file_url"]
    got = await client.get(path_of(urls["file_url"]))
    # Typed by its bytes, which are no video (whatever the upload claimed): an attachment.
    assert await got.read() == b"x" * 10 + b"y" * 5
    assert got.headers["Content-Type"] == "application/octet-stream"


async def test_auth_applies_as_on_the_other_storage_routes(client: Client) -> None:
    assert (await client.post("/files/upload/multipart", headers={"X-Fal-File-Name": "a.bin"})).status == 401
    forged = await client.post("/files/upload/multipart", headers={"Authorization": "Bearer forged.token"})
    assert forged.status == 401
    assert (await client.post("/storage/upload/initiate-multipart", json={})).status == 401
    with_body = await client.post("/files/upload/multipart", data=b"the file", headers=KEY)
    assert with_body.status == 400 and "takes no body" in (await with_body.json())["detail"]
    urls = await js_start(client)
    file_path = path_of(urls["file_url"])
    status, error, _ = await put(client, f"{file_path}/multipart/{'0' * 32}/1", b"x")
    assert status == 404 and "No multipart upload" in error["detail"], "the multipart id is the credential"
    multipart_id = urls["upload_url"].rsplit("/", 1)[1]
    other_file = file_path.rsplit("/", 2)[0] + f"/{'f' * 32}/clip.mp4"
    status, _, _ = await put(client, f"{other_file}/multipart/{multipart_id}/1", b"x")
    assert status == 404, "an id works only with its own file"


@pytest.mark.parametrize("part", ["0", "10001", "abc", "-1", "1.5", "00000000001", "١"])
async def test_bad_part_numbers_are_400(client: Client, part: str) -> None:
    urls = await js_start(client)
    status, error, _ = await put(client, f"{urls['upload_url']}/{part}", b"x")
    assert status == 400 and error["error_type"] == "invalid_part"
    assert "from 1 to 10000" in error["detail"]


async def test_complete_checks_the_listed_parts(client: Client, settings: Settings) -> None:
    urls = await js_start(client)
    _, part, _ = await put(client, f"{urls['upload_url']}/1", b"one")
    done = f"{urls['upload_url']}/complete"
    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        ([{"partNumber": 1, "etag": '"' + "0" * 32 + '"'}], 400, "does not match"),
        (
            [{"partNumber": 1, "etag": part["etag"]}, {"partNumber": 2, "etag": part["etag"]}],
            400,
            "never uploaded",
        ),
        ([{"partNumber": 1, "etag": part["etag"]}] * 2, 400, "more than once"),
        ([], 422, "at least 1"),
        ([{"partNumber": "x", "etag": part["etag"]}], 422, "integer"),
    ]
    for parts, want_status, phrase in cases:
        status, error = await complete(client, done, parts)
        assert status == want_status and phrase in str(error["detail"]), (parts, error)
    unquoted = [{"partNumber": 1, "etag": part["etag"].strip('"')}]
    assert (await complete(client, done, unquoted))[0] == 200, "an unquoted etag is the same etag"
    unknown = await complete(client, f"{urls['file_url']}/multipart/{'1' * 32}/complete", unquoted)
    assert unknown[0] == 404 and "No multipart upload" in unknown[1]["detail"]


async def test_total_size_limit_counts_all_parts(client: Client, settings: Settings) -> None:
    urls = await js_start(client)
    assert (await put(client, f"{urls['upload_url']}/1", b"a" * 600))[0] == 200
    assert (await put(client, f"{urls['upload_url']}/1", b"a" * 900))[0] == 200, "a re-sent part replaces"
    status, error, _ = await put(client, f"{urls['upload_url']}/2", b"b" * 200)
    assert (
        status == 413
        and error["error_type"] == "file_too_large"
        and "DARKROOM_UPLOAD_MAX_BYTES" in error["detail"]
    )

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"c" * 40  # no Content-Length: the limit is enforced while streaming

    assert (await client.put(path_of(f"{urls['upload_url']}/3"), data=chunked())).status == 413
    multipart_id = urls["upload_url"].rsplit("/", 1)[1]
    assert sorted(os.listdir(settings.uploads_path / ".multipart" / multipart_id)) == ["1"]


async def test_parts_and_the_joined_file_count_against_the_storage_quota(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), api_keys="test-id:test-secret", storage_quota_bytes=1000
    )
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        urls = await js_start(client)
        one = await put(client, f"{urls['upload_url']}/1", b"a" * 400)
        assert one[0] == 200
        status, error, _ = await put(client, f"{urls['upload_url']}/2", b"b" * 700)
        assert status == 507 and error["error_type"] == "storage_full", error
        assert (await put(client, f"{urls['upload_url']}/1", b"a" * 450))[0] == 200, "a re-sent part replaces"
        # joining needs the parts' size again while both copies exist: 450 + 450 fits in 1000
        status, body = await complete(
            client, f"{urls['upload_url']}/complete", [{"partNumber": 1, "etag": md5_etag(b"a" * 450)}]
        )
        assert status == 200, body
        assert leftovers(settings) == [f"{path_of(urls['file_url']).split('/')[3]}/clip.mp4"]
        again = await js_start(client, "more.mp4")
        status, error, _ = await put(client, f"{again['upload_url']}/1", b"c" * 600)
        assert status == 507, "the joined file still counts; its parts no longer do"
        assert (await put(client, f"{again['upload_url']}/1", b"c" * 500))[0] == 200


async def test_complete_waits_for_parts_in_flight(client: Client) -> None:
    urls = await js_start(client)
    release = asyncio.Event()

    async def slow_part() -> AsyncIterator[bytes]:
        yield b"first half "
        await release.wait()
        yield b"second half"

    sending = asyncio.ensure_future(client.put(path_of(f"{urls['upload_url']}/1"), data=slow_part()))
    store = client.app[MULTIPART]
    (upload,) = store._uploads.values()
    while not upload.inflight_parts:  # the server has the part's first bytes
        await asyncio.sleep(0.01)
    status, error = await complete(client, f"{urls['upload_url']}/complete", [{"partNumber": 1, "etag": "x"}])
    assert status == 400 and "still arriving" in error["detail"]
    release.set()
    response = await sending
    assert response.status == 200 and (await response.json())["size"] == 22


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_sweep_removes_abandoned_uploads_and_orphans(tmp_path: Path) -> None:
    clock = Clock()
    store = MultipartStore(tmp_path, 1000, ttl_s=3600.0, clock=clock)
    idle = store.begin("a" * 32, "idle.bin")
    busy = store.begin("b" * 32, "busy.bin")
    await store.receive_part(idle, "a" * 32, "idle.bin", 1, chunks_of(b"x"))
    orphan, recent = store.parts_root / ("c" * 32), store.parts_root / ("d" * 32)
    for folder in (orphan, recent):  # left by an earlier process
        folder.mkdir()
        (folder / "1").write_bytes(b"old")
    os.utime(orphan, (clock.now - 3601, clock.now - 3601))
    os.utime(recent, (clock.now, clock.now))

    clock.now += 1800
    await store.receive_part(busy, "b" * 32, "busy.bin", 1, chunks_of(b"y"))  # keeps it alive
    assert await store.sweep() == [orphan.name]
    clock.now += 1800
    assert sorted(await store.sweep()) == sorted([idle, recent.name])
    assert sorted(p.name for p in store.parts_root.iterdir()) == [busy]
    with pytest.raises(Exception, match="No multipart upload") as caught:
        await store.receive_part(idle, "a" * 32, "idle.bin", 2, chunks_of(b"z"))
    assert getattr(caught.value, "status", None) == 404

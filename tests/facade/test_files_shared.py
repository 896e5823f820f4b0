"""Two hosts sharing one S3 bucket (DARKROOM_STORAGE_URL, moto's server on loopback), each with its own
empty data dir: what one host stores (uploads, multipart uploads, outputs) the other serves at the
same /files URL, streamed from the bucket, with its type, a byte range, and 404 once deleted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from server.api.state import GENERATOR
from server.app import create_app
from server.media.objects import StorageUnavailableError
from server.settings import Settings, load_settings
from tests.fakes import IdleSupervisor
from tests.s3 import S3Server

KEY = {"Authorization": "Key test-id:test-secret"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
Client = TestClient[web.Request, web.Application]


def host_settings(data_dir: Path, storage_url: str) -> Settings:
    return load_settings(
        {}, data_dir=str(data_dir), api_keys="test-id:test-secret", storage_url=storage_url,
        public_url="https://darkroom.example",  # one name for the fleet, as behind a load balancer
    )  # fmt: skip


@pytest_asyncio.fixture
async def hosts(tmp_path: Path, storage_url: str) -> AsyncIterator[tuple[Client, Client]]:
    apps = [
        create_app(
            host_settings(tmp_path / name, storage_url), IdleSupervisor(ready=True), run_supervisor=False
        )  # type: ignore[arg-type]
        for name in ("a", "b")
    ]
    async with TestClient(TestServer(apps[0])) as a, TestClient(TestServer(apps[1])) as b:
        yield a, b


def local_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and p.parent != data_dir]  # keys live at the top


async def test_an_upload_to_one_host_is_served_by_the_other(
    hosts: tuple[Client, Client], tmp_path: Path, storage_url: str, s3_server: S3Server
) -> None:
    a, b = hosts
    body = {"file_name": "cat.png", "content_type": "image/png"}
    initiated = await a.post("/storage/upload/initiate", json=body, headers=KEY)
    urls = await initiated.json()
    assert urls["file_url"].startswith("https://darkroom.example/files/uploads/")
    path = URL(urls["upload_url"]).path
    assert (await a.put(path, data=PNG, headers={"Content-Type": "image/png"})).status == 200
    assert s3_server.keys(storage_url) == [path.removeprefix("/files/")]
    assert local_files(tmp_path / "a") == []  # the arriving copy is gone once the object is stored

    got = await b.get(path)  # no key: a capability URL, on a host that never saw the upload
    assert got.status == 200 and await got.read() == PNG
    assert got.headers["Content-Type"] == "image/png" and got.headers["Content-Length"] == str(len(PNG))
    ranged = await b.get(path, headers={"Range": "bytes=8-15"})
    assert ranged.status == 206 and await ranged.read() == PNG[8:16]
    assert ranged.headers["Content-Range"] == f"bytes 8-15/{len(PNG)}"
    past = await b.get(path, headers={"Range": f"bytes={len(PNG) + 10}-"})
    assert past.status == 416 and (await past.json())["error_type"] == "range_not_satisfiable"
    head = await b.head(path)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(PNG))
    missing = await b.get(path.replace("cat.png", "dog.png"))
    assert missing.status == 404 and "No file" in (await missing.json())["detail"]


async def test_a_multipart_upload_completed_on_one_host_is_served_by_the_other(
    hosts: tuple[Client, Client],
) -> None:
    a, b = hosts
    started = await a.post("/storage/upload/initiate-multipart", json={"file_name": "clip.bin"}, headers=KEY)
    urls = await started.json()
    base = URL(urls["upload_url"]).path
    etags = [
        (await (await a.put(f"{base}/{n}", data=part)).json())["etag"]
        for n, part in enumerate((b"one ", b"two"), 1)
    ]
    body = {"parts": [{"partNumber": n, "etag": etag} for n, etag in zip((1, 2), etags, strict=True)]}
    assert (await a.post(f"{base}/complete", json=body)).status == 200
    got = await b.get(URL(urls["file_url"]).path)
    assert got.status == 200 and await got.read() == b"one two"
    assert got.headers["Content-Type"] == "application/octet-stream"


async def test_an_output_one_host_wrote_is_served_by_the_other_until_deleted(
    hosts: tuple[Client, Client], storage_url: str, s3_server: S3Server
) -> None:
    a, b = hosts
    request_id = str(uuid.uuid4())
    stored = await a.app[GENERATOR].store.write(request_id, "0.png", PNG, "image/png")
    got = await b.get(stored.route)
    assert got.status == 200 and await got.read() == PNG and got.headers["Content-Type"] == "image/png"
    assert (await b.get(f"/files/{request_id}/1.png")).status == 404
    await asyncio.to_thread(b.app[GENERATOR].store.delete, [request_id])  # as the queue expires a result
    assert s3_server.keys(storage_url) == [] and (await a.get(stored.route)).status == 404


async def test_a_missing_bucket_fails_start_up(tmp_path: Path, storage_url: str) -> None:
    settings = host_settings(tmp_path, "s3://no-such-bucket/x")
    app = create_app(settings, IdleSupervisor(ready=True), run_supervisor=False)  # type: ignore[arg-type]
    with pytest.raises(StorageUnavailableError, match="bucket no-such-bucket does not exist"):
        async with TestClient(TestServer(app)):
            pass

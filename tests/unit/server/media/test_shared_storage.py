"""The file stores over a shared S3 bucket (moto's, on loopback): outputs, uploads (single and
multipart), links to our own files as inputs, and the LoRA cache that one host fills for the others."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.errors import InputError
from server.media.disk import DiskBudget
from server.media.inputs import fetch_input
from server.media.loras import LoraCache
from server.media.multipart import MultipartStore
from server.media.objects import ObjectStore
from server.media.outputs import OutputStore
from server.media.uploads import UploadStore
from server.security import netpolicy
from server.security.netpolicy import AddressPolicy
from server.settings import Settings, load_settings
from tests.s3 import S3Server

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


@pytest_asyncio.fixture
async def objects(storage_url: str) -> AsyncIterator[ObjectStore]:
    store = ObjectStore(storage_url)
    await store.open()
    yield store
    await store.close()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_outputs_are_written_deleted_and_expired_in_the_bucket(
    objects: ObjectStore, storage_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    store = OutputStore(tmp_path / "outputs", DiskBudget([tmp_path / "outputs"]), objects)
    for request_id in ("job", "sync", "other"):
        saved = await store.write(request_id, "0.png", PNG, "image/png")
        assert saved.route == f"/files/{request_id}/0.png"
    assert s3_server.keys(storage_url) == ["outputs/job/0.png", "outputs/other/0.png", "outputs/sync/0.png"]
    assert not (tmp_path / "outputs").exists() and store.budget.used_bytes == 0  # never on local disk

    await asyncio.to_thread(store.delete, ["other", "never", ".."])  # as the queue calls it
    assert await asyncio.to_thread(store.expire, older_than_s=3600, keep={"job"}) == 0
    assert await asyncio.to_thread(store.expire, older_than_s=-60, keep={"job"}) == 1  # all are "old"
    assert s3_server.keys(storage_url) == ["outputs/job/0.png"]


async def test_an_upload_lands_in_the_bucket_once_complete(
    objects: ObjectStore, storage_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    budget = DiskBudget([tmp_path / "uploads"])
    store = UploadStore(tmp_path / "uploads", 1 << 20, budget, objects)
    upload_id, name = store.begin("cat.png", "image/png")
    assert await store.receive(upload_id, name, chunks(PNG[:10], PNG[10:])) == len(PNG)
    assert s3_server.keys(storage_url) == [f"uploads/{upload_id}/{name}"]
    assert await objects.read(f"uploads/{upload_id}/{name}") == PNG
    assert (await objects.head(f"uploads/{upload_id}/{name}")).content_type == "image/png"  # type: ignore[union-attr]
    assert budget.used_bytes == 0 and not [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]

    leftover = tmp_path / "uploads" / ".incoming" / "crashed.part"  # a process died mid-upload
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    assert await asyncio.to_thread(store.expire, older_than_s=3600) == 0
    assert not leftover.exists()
    assert await asyncio.to_thread(store.expire, older_than_s=-60) == 1
    assert s3_server.keys(storage_url) == []


async def test_a_multipart_upload_is_joined_into_the_bucket(
    objects: ObjectStore, storage_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    budget = DiskBudget([tmp_path / "uploads"])
    store = MultipartStore(tmp_path / "uploads", 1 << 20, budget=budget, objects=objects)
    multipart_id = store.begin("a" * 32, "clip.bin")
    one = await store.receive_part(multipart_id, "a" * 32, "clip.bin", 1, chunks(b"first "))
    two = await store.receive_part(multipart_id, "a" * 32, "clip.bin", 2, chunks(b"second"))
    assert await store.complete(multipart_id, "a" * 32, "clip.bin", [(2, two.etag), (1, one.etag)]) == 12
    assert s3_server.keys(storage_url) == [f"uploads/{'a' * 32}/clip.bin"]
    assert await objects.read(f"uploads/{'a' * 32}/clip.bin") == b"first second"
    assert budget.used_bytes == 0 and not [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": str(tmp_path), "inputs_allow_http": True}
    return load_settings({}, **{**values, **overrides})


async def fetch(settings: Settings, url: str, **kwargs: object):  # type: ignore[no-untyped-def]
    async with netpolicy.guarded_session(AddressPolicy.from_settings(settings)) as session:
        return await fetch_input(url, settings=settings, session=session, **kwargs)  # type: ignore[arg-type]


async def test_links_to_our_own_files_are_read_from_the_bucket(objects: ObjectStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # no network allowed but the bucket's
    await objects.put(f"uploads/{'b' * 32}/photo.png", PNG, "image/png")
    await objects.put("outputs/req-1/0.png", PNG, "image/png")
    base = "https://darkroom.example"
    for path in (f"/files/uploads/{'b' * 32}/photo.png", "/files/req-1/0.png"):
        found = await fetch(settings, base + path, own_base_url=base, objects=objects)
        assert (found.content_type, found.path.read_bytes()) == ("image/png", PNG)
    for missing in (f"/files/uploads/{'0' * 32}/x.png", "/files/req-1/../../x", "/files/req-2/0.png"):
        with pytest.raises(InputError, match="names no file on this server") as caught:
            await fetch(settings, base + missing, own_base_url=base, objects=objects)
        assert caught.value.status == 404
    with pytest.raises(InputError, match="too large"):
        await fetch(settings, base + "/files/req-1/0.png", own_base_url=base, objects=objects, max_bytes=8)


@pytest_asyncio.fixture
async def lora_origin() -> AsyncIterator[tuple[str, list[str]]]:
    """An https-less origin serving one LoRA file; the paths it was asked for."""
    asked: list[str] = []

    async def lora(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=b"not really safetensors, but bytes with a hash")

    app = web.Application()
    app.router.add_get("/lora.safetensors", lora)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}/lora.safetensors", asked


async def test_a_lora_one_host_downloaded_is_copied_from_the_bucket_by_another(
    objects: ObjectStore,
    storage_url: str,
    s3_server: S3Server,
    tmp_path: Path,
    lora_origin: tuple[str, list[str]],
) -> None:
    url, asked = lora_origin
    digest = hashlib.sha256(b"not really safetensors, but bytes with a hash").hexdigest()
    allow = {"outbound_allow_cidrs": "127.0.0.1/32"}
    host_a = LoraCache(make_settings(tmp_path / "a", **allow), objects)
    host_b = LoraCache(make_settings(tmp_path / "b", **allow), objects)
    host_c = LoraCache(make_settings(tmp_path / "c", **allow), objects)

    [entry] = await host_a.resolve([{"path": url, "scale": 1.0}])
    assert entry["path"] == f"cache/{digest}.safetensors" and asked == ["/lora.safetensors"]
    assert f"loras/{digest}.safetensors" in s3_server.keys(storage_url)

    [by_url] = await host_b.resolve([{"path": url, "scale": 1.0}])  # by URL: no second download
    [by_hash] = await host_c.resolve([{"path": url + "?v=2", "sha256": digest, "scale": 1.0}])  # by hash
    assert by_url["path"] == by_hash["path"] == entry["path"] and asked == ["/lora.safetensors"]
    assert (host_b.downloads, host_b.shared_copies, host_c.shared_copies) == (0, 1, 1)
    assert (tmp_path / "b" / "models" / "loras" / entry["path"]).is_file()  # the worker loads a local file
    with pytest.raises(InputError, match="not the"):
        await LoraCache(make_settings(tmp_path / "d", **allow), objects).resolve(
            [{"path": url, "sha256": "0" * 64, "scale": 1.0}]
        )

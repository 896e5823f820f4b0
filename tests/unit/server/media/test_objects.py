"""The S3 object store against a real S3-compatible server (moto's, on loopback): keys under the URL's
prefix, streamed and ranged reads, big files in parts, deletes, and the errors clients get."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from server.engine.worker import free_port
from server.errors import DarkroomError, NotFoundError
from server.media import objects as objects_module
from server.media.objects import ObjectStore, StorageUnavailableError, parse_url
from tests.s3 import S3Server


@pytest_asyncio.fixture
async def store(storage_url: str) -> AsyncIterator[ObjectStore]:
    objects = ObjectStore(storage_url)
    await objects.open()
    yield objects
    await objects.close()


def test_the_url_names_a_bucket_and_a_prefix() -> None:
    assert parse_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_url("s3://my-bucket/fleet/a/") == ("my-bucket", "fleet/a")
    for bad in ("my-bucket", "https://my-bucket/x", "s3://", "s3://UPPER/x"):
        with pytest.raises(ValueError, match="DARKROOM_STORAGE_URL"):
            parse_url(bad)


async def test_put_get_head_delete_under_the_prefix(
    store: ObjectStore, storage_url: str, s3_server: S3Server
) -> None:
    await store.put("outputs/r1/0.png", b"\x89PNG one", "image/png")
    await store.put("outputs/r1/1.png", b"\x89PNG two", "image/png")
    await store.put("outputs/r2/0.png", b"\x89PNG three", "image/png")
    assert s3_server.keys(storage_url) == ["outputs/r1/0.png", "outputs/r1/1.png", "outputs/r2/0.png"]
    assert s3_server.keys(storage_url.rsplit("/", 1)[0])[0] == "darkroom/outputs/r1/0.png"

    body = await store.get("outputs/r1/0.png")
    assert (body.size_bytes, body.content_type, body.content_range) == (8, "image/png", None)
    assert b"".join([chunk async for chunk in body.chunks]) == b"\x89PNG one"
    info = await store.head("outputs/r1/1.png")
    assert info is not None and (info.key, info.size_bytes, info.content_type) == (
        "outputs/r1/1.png", 8, "image/png"
    )  # fmt: skip
    assert await store.read("outputs/r2/0.png") == b"\x89PNG three"
    listed = [info.key async for info in store.listing("outputs/r1/")]
    assert listed == ["outputs/r1/0.png", "outputs/r1/1.png"]

    assert await store.delete_prefix("outputs/r1/") == 2
    await store.delete(["outputs/r2/0.png", "outputs/never/0.png"])  # a missing key is fine
    assert s3_server.keys(storage_url) == []
    assert await store.head("outputs/r1/0.png") is None
    with pytest.raises(NotFoundError):
        await store.get("outputs/r1/0.png")


async def test_a_range_is_passed_on_and_one_past_the_end_is_a_416(store: ObjectStore) -> None:
    await store.put("f.bin", bytes(range(100)), "application/octet-stream")
    body = await store.get("f.bin", byte_range="bytes=10-19")
    assert (body.size_bytes, body.content_range) == (10, "bytes 10-19/100")
    assert b"".join([chunk async for chunk in body.chunks]) == bytes(range(10, 20))
    suffix = await store.get("f.bin", byte_range="bytes=-5")
    assert b"".join([chunk async for chunk in suffix.chunks]) == bytes(range(95, 100))
    whole = await store.get("f.bin", byte_range="bytes=0-1,5-6")  # several ranges: the whole file
    assert whole.size_bytes == 100 and whole.content_range is None
    await whole.chunks.aclose()
    with pytest.raises(DarkroomError) as raised:
        await store.get("f.bin", byte_range="bytes=200-")
    assert (raised.value.status, raised.value.code) == (416, "range_not_satisfiable")


async def test_a_big_file_goes_up_in_parts_and_downloads_whole(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects_module, "PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    assert await store.put_file("uploads/big.bin", tmp_path / "big.bin", "application/octet-stream") == len(
        data
    )
    assert await store.download("uploads/big.bin", tmp_path / "back.bin") == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data


async def test_run_sync_waits_on_the_loop_from_a_thread_only(store: ObjectStore) -> None:
    await store.put("k", b"v", "text/plain")
    assert await asyncio.to_thread(lambda: store.run_sync(store.read("k"))) == b"v"
    with pytest.raises(RuntimeError, match="from the event loop"):
        store.run_sync(store.read("k"))


async def test_a_missing_bucket_or_an_unreachable_endpoint_fails_opening(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StorageUnavailableError, match="bucket no-such-bucket does not exist"):
        await ObjectStore("s3://no-such-bucket/x").open()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageUnavailableError, match="could not be reached") as raised:
        await ObjectStore(storage_url).open()
    assert raised.value.status == 503 and raised.value.headers["Retry-After"]

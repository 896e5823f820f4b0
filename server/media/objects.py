"""An S3 bucket (``DARKROOM_STORAGE_URL=s3://bucket/prefix``) holding the files several hosts share:
outputs, uploads and the LoRA cache, each under its own folder of the URL's prefix.

The AWS SDK (botocore, through aiobotocore) finds the endpoint, region and credentials itself, in
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, its
config files or an instance role: nothing here reads them. S3 failures become a 503
``storage_unavailable`` (a missing object: 404), so a bucket that is briefly away fails the request
that needed it, not the server.

The store lives on the event loop that opened it; ``run_sync`` lets code running in a worker thread
(the queue's expiry calls ``OutputStore.delete`` through ``asyncio.to_thread``) wait on it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from server.errors import DarkroomError, NotFoundError
from server.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

PART_BYTES = 16 * 1024 * 1024  # S3 multipart part size for big files (10,000 parts: 160 GiB)
CHUNK_BYTES = 1 << 16
_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
_RANGE = re.compile(r"^bytes=(\d+-\d*|-\d+)$")  # one range: anything else is served whole (RFC 9110)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class StorageUnavailableError(DarkroomError):
    """The object store failed or could not be reached (503; retry)."""

    status = 503
    code = "storage_unavailable"


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size_bytes: int
    modified_at: float  # Unix time
    content_type: str = "application/octet-stream"


@dataclass
class ObjectBody:
    """An object being read: its bytes as chunks, and what a response needs to describe them."""

    chunks: AsyncGenerator[bytes, None]  # aclose() it if not read to the end
    size_bytes: int  # of this body (the range, if one was asked for)
    content_type: str
    content_range: str | None  # "bytes 0-9/100" when a range was served


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix without slashes at its ends."""
    match = _URL.match(url.strip())
    if match is None:
        raise ValueError(
            f"DARKROOM_STORAGE_URL={url!r}: expected s3://bucket or s3://bucket/prefix "
            "(a bucket name of 3-63 lowercase letters, digits, dots and dashes)"
        )
    return match["bucket"], (match["prefix"] or "").strip("/")


def from_settings(settings: Settings) -> ObjectStore | None:
    """The shared store ``storage_url`` names, unopened; None when files stay on local disk."""
    return ObjectStore(settings.storage_url) if settings.storage_url else None


class ObjectStore:
    """The keys under one bucket's prefix: put, get (streamed, a Range allowed), head, delete."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack = contextlib.AsyncExitStack()

    async def open(self) -> None:
        """Create the S3 client and check that the bucket answers (a wrong URL fails start-up)."""
        self._client = await self._stack.enter_async_context(get_session().create_client("s3"))
        self._loop = asyncio.get_running_loop()
        try:
            async with self._errors(f"bucket {self.bucket}"):
                await self._client.head_bucket(Bucket=self.bucket)
        except NotFoundError as e:
            endpoint = self._endpoint()
            await self.close()
            raise StorageUnavailableError(
                f"DARKROOM_STORAGE_URL={self.url}: bucket {self.bucket} does not exist at {endpoint}; "
                "create it, or fix the URL or AWS_ENDPOINT_URL."
            ) from e
        except BaseException:
            await self.close()
            raise
        logger.info("shared storage: %s", self.url)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def _endpoint(self) -> str:
        return str(self._client.meta.endpoint_url) if self._client is not None else "(no client)"

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def run_sync(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the store's loop from another thread and wait for its result."""
        if self._loop is None:
            work.close()
            raise RuntimeError("ObjectStore.run_sync before open()")
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the one place run_sync may wait
            return asyncio.run_coroutine_threadsafe(work, self._loop).result()
        work.close()
        raise RuntimeError("ObjectStore.run_sync from the event loop: await the coroutine instead")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` at ``key`` (it appears whole or not at all)."""
        async with self._errors(key):
            await self.client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=data, ContentType=content_type
            )

    async def put_file(self, key: str, path: Path, content_type: str) -> int:
        """Store a local file at ``key``, in parts above ``PART_BYTES``, never whole in memory; its size."""
        size = path.stat().st_size
        if size <= PART_BYTES:
            await self.put(key, await asyncio.to_thread(path.read_bytes), content_type)
            return size
        full = self.full_key(key)
        async with self._errors(key):
            started = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=content_type
            )
            upload_id = started["UploadId"]
            try:
                parts = await self._put_parts(full, upload_id, path)
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
                raise
        return size

    async def _put_parts(self, full_key: str, upload_id: str, path: Path) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        with path.open("rb") as source:
            while data := await asyncio.to_thread(source.read, PART_BYTES):
                number = len(parts) + 1
                answer = await self.client.upload_part(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        return parts

    async def get(self, key: str, *, byte_range: str | None = None) -> ObjectBody:
        """The object at ``key``, streamed; ``byte_range`` is a Range header (one range, else ignored).
        NotFoundError if there is none; 416 if the range starts past its end."""
        extra = {"Range": byte_range} if byte_range and _RANGE.match(byte_range) else {}
        async with self._errors(key):
            answer = await self.client.get_object(Bucket=self.bucket, Key=self.full_key(key), **extra)
        return ObjectBody(
            chunks=_chunks(answer["Body"]),
            size_bytes=int(answer["ContentLength"]),
            content_type=str(answer.get("ContentType") or "application/octet-stream"),
            content_range=answer.get("ContentRange") if extra else None,
        )

    async def read(self, key: str, *, byte_range: str | None = None) -> bytes:
        """The whole object at ``key`` (for small ones), or the ``byte_range`` of it; NotFoundError if
        there is none."""
        body = await self.get(key, byte_range=byte_range)
        async with self._errors(key):
            return b"".join([chunk async for chunk in body.chunks])

    async def download(self, key: str, dest: Path) -> int:
        """Copy the object at ``key`` to the local file ``dest``; its size."""
        body = await self.get(key)
        size = 0
        with dest.open("wb") as out:
            async with self._errors(key):
                async for chunk in body.chunks:
                    size += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
        return size

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, time and type; None if there is none."""
        try:
            async with self._errors(key):
                answer = await self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except NotFoundError:
            return None
        return ObjectInfo(
            key,
            int(answer["ContentLength"]),
            answer["LastModified"].timestamp(),
            str(answer.get("ContentType") or "application/octet-stream"),
        )

    async def listing(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (relative keys), in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.full_key(""))
        async with self._errors(prefix):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for entry in page.get("Contents", ()):
                    modified = entry["LastModified"].timestamp()
                    yield ObjectInfo(entry["Key"][strip:], int(entry["Size"]), modified)

    async def delete(self, keys: list[str]) -> None:
        """Delete these keys (missing ones are fine)."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": self.full_key(key)} for key in keys[start : start + _DELETE_BATCH]]
            async with self._errors(keys[start]):
                answer = await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if errors := answer.get("Errors"):
                raise StorageUnavailableError(f"Deleting {len(errors)} object(s) failed: {errors[0]}")

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; how many."""
        keys = [info.key async for info in self.listing(prefix)]
        await self.delete(keys)
        return len(keys)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("ObjectStore used before open()")
        return self._client

    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        """S3's errors as ours: a missing object or bucket is a 404 or a 503 that names it."""
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise NotFoundError(f"No object {what} in {self.url}") from e
            if code == "InvalidRange":
                raise DarkroomError(
                    f"The range asked for is past the end of {what}", status=416, code="range_not_satisfiable"
                ) from e
            logger.warning("object store %s: %s failed: %s", self.url, what, e)
            raise StorageUnavailableError(
                f"The object store ({self.url}) failed on {what}: {code or e}. Retry later.",
                headers={"Retry-After": "10"},
            ) from e
        except (BotoCoreError, aiohttp.ClientError) as e:
            logger.warning("object store %s: %s failed: %s", self.url, what, e)
            raise StorageUnavailableError(
                f"The object store ({self.url}) could not be reached for {what}: {e}. Retry later.",
                headers={"Retry-After": "10"},
            ) from e


async def _chunks(body: Any) -> AsyncGenerator[bytes, None]:
    """An S3 body as chunks, closed when done or abandoned."""
    try:
        async for chunk in body.iter_chunks(CHUNK_BYTES):
            yield chunk
    finally:
        body.close()

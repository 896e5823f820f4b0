"""Uploaded files: ``<data_dir>/uploads/<id>/<name>``, reserved by id, each appearing only once complete.

With an object store, a file streams to ``<data_dir>/uploads/.incoming`` (within the disk budget, which
holds it only while it arrives) and is then put under ``uploads/<id>/<name>`` there, so any host serves it.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import InputError, NotFoundError
from server.media.disk import DiskBudget
from server.media.objects import ObjectStore
from server.media.outputs import content_type_of

logger = logging.getLogger(__name__)

PENDING_TTL_S = 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
UPLOADS_PREFIX = "uploads/"  # object keys: uploads/<id>/<name>
INCOMING = ".incoming"  # where uploads bound for the object store arrive


@dataclass(frozen=True)
class Pending:
    name: str
    content_type: str
    expires_at: float


def too_large(size_bytes: int, max_bytes: int) -> InputError:
    """The 413 for an upload past ``upload_max_bytes`` (single or multipart)."""
    return InputError(
        f"Upload is too large: {size_bytes} bytes or more, the limit is {max_bytes} "
        "(DARKROOM_UPLOAD_MAX_BYTES).",
        status=413,
        code="file_too_large",
    )


def safe_name(file_name: str | None, content_type: str) -> str:
    """A file name safe to store and put in a URL, with an extension that matches the content type."""
    base = re.split(r"[/\\]", file_name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:120].removesuffix(".part") or "upload"
    media_type = content_type.split(";")[0].strip().lower()
    extension = mimetypes.guess_extension(media_type) or ""
    # Generic bytes keep their own extension: x.safetensors (unknown to mimetypes) must not become .bin.
    generic = media_type == "application/octet-stream" and "." in base
    if extension and not generic and mimetypes.guess_type(base)[0] != media_type:
        base += extension
    return base


class UploadStore:
    """Owns ``<data_dir>/uploads``: one folder per upload id; a file appears only once complete."""

    def __init__(
        self, root: Path, max_bytes: int, budget: DiskBudget | None = None, objects: ObjectStore | None = None
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.budget = budget or DiskBudget()
        self.objects = objects
        self._pending: dict[str, Pending] = {}

    def begin(self, file_name: str | None, content_type: str) -> tuple[str, str]:
        """Reserve an upload id for one later PUT; returns (id, stored name)."""
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now}
        upload_id = secrets.token_hex(16)
        name = safe_name(file_name, content_type)
        self._pending[upload_id] = Pending(name, content_type, now + PENDING_TTL_S)
        return upload_id, name

    def claim(self, upload_id: str, name: str) -> Pending:
        """The reservation for a PUT, removed so the URL accepts only one; 404 if none or expired."""
        pending = self._pending.pop(upload_id, None)
        if pending is None or pending.name != name or pending.expires_at <= time.time():
            raise NotFoundError(
                f"No pending upload {upload_id}/{name}: initiate one first (it lasts an hour)"
            )
        return pending

    async def receive(
        self, upload_id: str, name: str, chunks: AsyncIterable[bytes], *, declared_bytes: int | None = None
    ) -> int:
        """Stream a body to the upload's file, within the size limit and the disk budget; its size."""
        if declared_bytes is not None and declared_bytes > self.max_bytes:
            raise too_large(declared_bytes, self.max_bytes)
        path = self._path(upload_id, name)
        what = f"upload {upload_id}/{name}"
        if declared_bytes is not None:
            self.budget.check(declared_bytes, what)
        partial = self._partial(path)
        size = 0
        try:
            with self.budget.writing(what):
                partial.parent.mkdir(parents=True, exist_ok=True)
                with partial.open("wb") as out:
                    async for chunk in chunks:
                        if size + len(chunk) > self.max_bytes:
                            raise too_large(size + len(chunk), self.max_bytes)
                        self.budget.take(len(chunk), what)
                        size += len(chunk)
                        out.write(chunk)
                if self.objects is None:
                    partial.rename(path)
            if self.objects is not None:
                await self.objects.put_file(upload_key(upload_id, name), partial, content_type_of(name))
                self.budget.give_back(size)  # the local copy goes in the finally below
        except BaseException:
            self.budget.give_back(size)
            raise
        finally:
            partial.unlink(missing_ok=True)
        logger.info("upload %s/%s: %d bytes", upload_id, name, size)
        return size

    def _partial(self, path: Path) -> Path:
        if self.objects is None:
            return path.with_name(path.name + ".part")
        return self.root / INCOMING / f"{path.parent.name}-{secrets.token_hex(4)}-{path.name}.part"

    def expire(self, *, older_than_s: float) -> int:
        """Delete uploads stored more than ``older_than_s`` ago; returns how many. With an object store,
        call it from a worker thread (``asyncio.to_thread``)."""
        if self.objects is not None:
            stale = self.objects.run_sync(_expire_objects(self.objects, older_than_s))
            self._drop_leftovers(older_than_s)
        else:
            stale = self.budget.expire(self.root, older_than_s=older_than_s, name_ok=_ID.match)
        if stale:
            logger.info("deleted %d upload(s) older than %g s", len(stale), older_than_s)
        return len(stale)

    def _drop_leftovers(self, older_than_s: float) -> None:
        """Delete files a crash left in ``.incoming`` that are as old as an expired upload."""
        cutoff = time.time() - older_than_s
        for leftover in (self.root / INCOMING).iterdir() if (self.root / INCOMING).is_dir() else ():
            with contextlib.suppress(OSError):  # finished meanwhile
                if leftover.stat().st_mtime < cutoff:
                    size = leftover.stat().st_size
                    leftover.unlink()
                    self.budget.give_back(size)

    def path_of(self, upload_id: str, name: str) -> Path:
        path = self._path(upload_id, name)
        if not path.is_file():
            raise NotFoundError(f"No uploaded file {upload_id}/{name}")
        return path

    def _path(self, upload_id: str, name: str) -> Path:
        _check(upload_id, name)
        return self.root / upload_id / name


def upload_key(upload_id: str, name: str) -> str:
    """The object key of an upload; NotFoundError for a name that could not be one."""
    _check(upload_id, name)
    return f"{UPLOADS_PREFIX}{upload_id}/{name}"


def _check(upload_id: str, name: str) -> None:
    if not (_ID.match(upload_id) and _NAME.match(name)) or name.endswith(".part"):
        raise NotFoundError(f"No uploaded file {upload_id}/{name}")


async def _expire_objects(objects: ObjectStore, older_than_s: float) -> list[str]:
    """Delete uploads (one object each) stored before the cutoff; their ids."""
    cutoff = time.time() - older_than_s
    stale = [info.key async for info in objects.listing(UPLOADS_PREFIX) if info.modified_at < cutoff]
    await objects.delete(stale)
    return [key.split("/")[1] for key in stale]

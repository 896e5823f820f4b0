"""Output files: stored per request under the outputs folder, or under ``outputs/`` in the shared object
store when ``storage_url`` names one, and served at /files/{request_id}/{name}."""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import re
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import NotFoundError
from server.media.disk import DiskBudget
from server.media.objects import ObjectStore

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
OUTPUTS_PREFIX = "outputs/"  # object keys: outputs/<request id>/<name>


@dataclass(frozen=True)
class StoredFile:
    request_id: str
    name: str
    content_type: str
    size_bytes: int

    @property
    def route(self) -> str:
        return f"/files/{self.request_id}/{self.name}"


class OutputStore:
    """Owns the outputs: one folder (or key prefix) per request, names checked so nothing escapes it.

    With an object store the files never touch the local disk, so the disk budget does not count them.
    """

    def __init__(
        self, root: Path, budget: DiskBudget | None = None, objects: ObjectStore | None = None
    ) -> None:
        self.root = root
        self.budget = budget or DiskBudget()  # none: no limits (readers only look files up)
        self.objects = objects

    async def write(self, request_id: str, name: str, data: bytes, content_type: str) -> StoredFile:
        """``save``, in the object store if there is one, else on disk off the event loop."""
        if self.objects is None:
            return await asyncio.to_thread(self.save, request_id, name, data, content_type)
        await self.objects.put(output_key(request_id, name), data, content_type)
        return StoredFile(request_id, name, content_type, len(data))

    def save(self, request_id: str, name: str, data: bytes, content_type: str) -> StoredFile:
        """Write one output; StorageFullError (507) if it does not fit, leaving nothing behind."""
        path = self._path(request_id, name)
        what = f"output {name} of request {request_id}"
        self.budget.take(len(data), what)
        partial = path.with_name(path.name + ".part")
        replaced = path.stat().st_size if path.is_file() else 0  # a run tried again writes its files again
        try:
            with self.budget.writing(what):
                path.parent.mkdir(parents=True, exist_ok=True)
                partial.write_bytes(data)
                partial.rename(path)
            self.budget.give_back(replaced)
        except BaseException:
            partial.unlink(missing_ok=True)
            self.budget.give_back(len(data))
            raise
        return StoredFile(request_id, name, content_type, len(data))

    def path_of(self, request_id: str, name: str) -> Path:
        path = self._path(request_id, name)
        if not path.is_file():
            raise NotFoundError(f"No file {name} for request {request_id}")
        return path

    def delete(self, request_ids: Iterable[str]) -> None:
        """Delete these requests' output folders (missing ones are fine). With an object store, call it
        from a worker thread (``asyncio.to_thread``), as the queue does."""
        safe = [request_id for request_id in request_ids if _SAFE_NAME.match(request_id)]
        if self.objects is not None:
            self.objects.run_sync(self._delete_objects(self.objects, safe))
            return
        for request_id in safe:
            self.budget.remove_folder(self.root / request_id)

    def expire(self, *, older_than_s: float, keep: Container[str] = ()) -> int:
        """Delete request folders last written more than ``older_than_s`` ago, except those in ``keep``:
        sync runs' outputs (queue jobs expire with their record) and any a crash left behind. With an
        object store, call it from a worker thread."""
        if self.objects is not None:
            objects = self.objects
            stale = objects.run_sync(self._expire_objects(objects, older_than_s=older_than_s, keep=keep))
        else:
            stale = self.budget.expire(
                self.root, older_than_s=older_than_s, keep=keep, name_ok=_SAFE_NAME.match
            )
        if stale:
            logger.info("deleted the outputs of %d request(s) older than %g s", len(stale), older_than_s)
        return len(stale)

    @staticmethod
    async def _delete_objects(objects: ObjectStore, request_ids: list[str]) -> None:
        for request_id in request_ids:
            await objects.delete_prefix(f"{OUTPUTS_PREFIX}{request_id}/")

    @staticmethod
    async def _expire_objects(
        objects: ObjectStore, *, older_than_s: float, keep: Container[str]
    ) -> list[str]:
        """The object-store sweep: a request's outputs go once its newest is older than the cutoff."""
        newest: dict[str, float] = {}
        keys: dict[str, list[str]] = {}
        async for info in objects.listing(OUTPUTS_PREFIX):
            request_id = info.key.removeprefix(OUTPUTS_PREFIX).split("/", 1)[0]
            newest[request_id] = max(newest.get(request_id, 0.0), info.modified_at)
            keys.setdefault(request_id, []).append(info.key)
        cutoff = time.time() - older_than_s
        stale = [r for r, at in newest.items() if at < cutoff and r not in keep and _SAFE_NAME.match(r)]
        await objects.delete([key for request_id in stale for key in keys[request_id]])
        return stale

    def _path(self, request_id: str, name: str) -> Path:
        _check(request_id, name)
        return self.root / request_id / name


def output_key(request_id: str, name: str) -> str:
    """The object key of an output; NotFoundError for a name that could not be one."""
    _check(request_id, name)
    return f"{OUTPUTS_PREFIX}{request_id}/{name}"


def _check(request_id: str, name: str) -> None:
    if not (_SAFE_NAME.match(request_id) and _SAFE_NAME.match(name)) or name.endswith(".part"):
        raise NotFoundError(f"No file {name} for request {request_id}")


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def content_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"

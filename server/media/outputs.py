"""Output files: stored per request under the outputs folder and served at /files/{request_id}/{name}."""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
import shutil
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import NotFoundError

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


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
    """Owns the outputs folder: one subfolder per request, names checked so nothing escapes it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, request_id: str, name: str, data: bytes, content_type: str) -> StoredFile:
        path = self._path(request_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(data)
        partial.rename(path)
        return StoredFile(request_id, name, content_type, len(data))

    def path_of(self, request_id: str, name: str) -> Path:
        path = self._path(request_id, name)
        if not path.is_file():
            raise NotFoundError(f"No file {name} for request {request_id}")
        return path

    def delete(self, request_ids: Iterable[str]) -> None:
        """Delete these requests' output folders (missing ones are fine)."""
        for request_id in request_ids:
            if _SAFE_NAME.match(request_id):
                shutil.rmtree(self.root / request_id, ignore_errors=True)

    def expire(self, *, older_than_s: float, keep: Container[str] = ()) -> int:
        """Delete request folders last written more than ``older_than_s`` ago, except those in ``keep``:
        sync runs' outputs (queue jobs expire with their record) and any a crash left behind."""
        cutoff, stale = time.time() - older_than_s, []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.name in keep or not folder.is_dir() or not _SAFE_NAME.match(folder.name):
                    continue
                if folder.stat().st_mtime < cutoff:
                    stale.append(folder.name)
        self.delete(stale)
        if stale:
            logger.info("deleted the outputs of %d request(s) older than %g s", len(stale), older_than_s)
        return len(stale)

    def _path(self, request_id: str, name: str) -> Path:
        if not (_SAFE_NAME.match(request_id) and _SAFE_NAME.match(name)) or name.endswith(".part"):
            raise NotFoundError(f"No file {name} for request {request_id}")
        return self.root / request_id / name


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def content_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"

"""Output files: stored per request under the outputs folder and served at /files/{request_id}/{name}."""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import NotFoundError
from server.media.disk import DiskBudget

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

    def __init__(self, root: Path, budget: DiskBudget | None = None) -> None:
        self.root = root
        self.budget = budget or DiskBudget()  # none: no limits (readers only look files up)

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
        """Delete these requests' output folders (missing ones are fine)."""
        for request_id in request_ids:
            if _SAFE_NAME.match(request_id):
                self.budget.remove_folder(self.root / request_id)

    def expire(self, *, older_than_s: float, keep: Container[str] = ()) -> int:
        """Delete request folders last written more than ``older_than_s`` ago, except those in ``keep``:
        sync runs' outputs (queue jobs expire with their record) and any a crash left behind."""
        stale = self.budget.expire(self.root, older_than_s=older_than_s, keep=keep, name_ok=_SAFE_NAME.match)
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

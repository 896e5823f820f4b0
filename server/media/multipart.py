"""Multipart uploads: parts streamed to disk in any order, joined into one upload file on complete.

The HTTP side (both SDKs' flows) is in ``server/api/storage.py``; this module owns the state and the files.
An upload is known by its multipart id (128 random bits, given only to the client that started it),
which is the credential for its parts and its completion, as an initiated upload's URL is for its PUT.

- Parts live in ``<uploads>/.multipart/<multipart id>/<n>``, outside the served ``<id>/<name>`` space.
  A part is written to a temporary file and renamed into place once whole, so a re-sent part replaces
  the earlier one only when it has fully arrived (the last one to arrive wins).
- The parts together may not pass ``max_bytes``, counted while they stream (parts in flight included).
- ``complete`` checks the listed parts' ETags, joins them in part-number order into ``<name>.part`` and
  renames that to ``<uploads>/<id>/<name>``: the file appears whole or not at all.
- With an object store, ``complete`` joins the parts under ``<uploads>/.incoming``, puts the file in the
  store (``uploads/<id>/<name>``) and only then deletes the parts, so a failed put can be completed again.
- An upload untouched for ``ttl_s`` (an hour) is dropped with its parts by ``sweep``, which also removes
  part folders an earlier process left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import InputError, NotFoundError
from server.media.disk import DiskBudget
from server.media.objects import ObjectStore
from server.media.outputs import content_type_of
from server.media.uploads import INCOMING, too_large, upload_key

logger = logging.getLogger(__name__)

MAX_PARTS = 10_000
MULTIPART_TTL_S = 3600.0
_JOIN_BUFFER_BYTES = 1 << 20


def _invalid_part(message: str) -> InputError:
    return InputError(message, status=400, code="invalid_part")


def parse_part_number(text: str) -> int:
    """A part number from a URL: an integer from 1 to ``MAX_PARTS``; 400 otherwise."""
    number = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
    if not 1 <= number <= MAX_PARTS:
        raise _invalid_part(f"Part number {text!r} is not valid: use an integer from 1 to {MAX_PARTS}.")
    return number


def quoted_etag(etag: str) -> str:
    """The ETag header form of a part's md5 hex digest."""
    return f'"{etag}"'


@dataclass(frozen=True)
class Part:
    etag: str  # md5 hex of the part's bytes, unquoted
    size_bytes: int


@dataclass
class Multipart:
    """One upload in progress: where its file will go, its parts, and what is streaming in now."""

    file_id: str
    name: str
    touched_at: float
    parts: dict[int, Part] = field(default_factory=dict)
    stored_bytes: int = 0  # the parts on disk
    inflight_bytes: int = 0  # bytes of parts still arriving
    inflight_parts: int = 0
    completing: bool = False
    completed: tuple[tuple[int, str], ...] | None = None  # the listing that completed it, for retries
    size_bytes: int = 0

    def replaced_bytes(self, part_number: int) -> int:
        old = self.parts.get(part_number)
        return old.size_bytes if old else 0


class MultipartStore:
    """The multipart uploads in progress, their parts under ``<root>/.multipart``."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        budget: DiskBudget | None = None,
        objects: ObjectStore | None = None,
        ttl_s: float = MULTIPART_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.objects = objects
        self.budget = budget or DiskBudget()
        self.parts_root = root / ".multipart"
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self._uploads: dict[str, Multipart] = {}

    def begin(self, file_id: str, name: str) -> str:
        """Start an upload that will become ``<root>/<file_id>/<name>``; returns its multipart id."""
        multipart_id = secrets.token_hex(16)
        self._uploads[multipart_id] = Multipart(file_id, name, touched_at=self.clock())
        return multipart_id

    def get(self, multipart_id: str, file_id: str, name: str) -> Multipart:
        """The upload with this id and file; 404 if none (completed long ago, expired or never begun)."""
        upload = self._uploads.get(multipart_id)
        if upload is None or (upload.file_id, upload.name) != (file_id, name):
            raise NotFoundError(
                f"No multipart upload {multipart_id} for {file_id}/{name}: it expired (an hour after its "
                "last part), was never started, or the URL is wrong. Start a new one."
            )
        return upload

    async def receive_part(
        self,
        multipart_id: str,
        file_id: str,
        name: str,
        part_number: int,  # from parse_part_number
        chunks: AsyncIterable[bytes],
        *,
        declared_bytes: int | None = None,
    ) -> Part:
        """Stream one part to disk, within the upload's size limit; it replaces any earlier copy."""
        upload = self.get(multipart_id, file_id, name)
        self._check_open(upload, multipart_id)
        if declared_bytes is not None:
            total = upload.stored_bytes - upload.replaced_bytes(part_number) + upload.inflight_bytes
            if total + declared_bytes > self.max_bytes:
                raise too_large(total + declared_bytes, self.max_bytes)
            self.budget.check(declared_bytes, f"part {part_number} of {file_id}/{name}")
        folder = self.parts_root / multipart_id
        partial = folder / f"{part_number}.{secrets.token_hex(4)}.tmp"
        digest, size = hashlib.md5(usedforsecurity=False), 0
        what = f"part {part_number} of upload {file_id}/{name}"
        upload.inflight_parts += 1
        try:
            with self.budget.writing(what):
                folder.mkdir(parents=True, exist_ok=True)
                with partial.open("wb") as out:
                    async for chunk in chunks:
                        total = upload.stored_bytes - upload.replaced_bytes(part_number)
                        if total + upload.inflight_bytes + len(chunk) > self.max_bytes:
                            raise too_large(total + upload.inflight_bytes + len(chunk), self.max_bytes)
                        self.budget.take(len(chunk), what)
                        size += len(chunk)
                        upload.inflight_bytes += len(chunk)
                        digest.update(chunk)
                        out.write(chunk)
            self._check_open(upload, multipart_id)
            partial.replace(folder / str(part_number))
            part = Part(digest.hexdigest(), size)
            self.budget.give_back(upload.replaced_bytes(part_number))
            upload.stored_bytes += size - upload.replaced_bytes(part_number)
            upload.parts[part_number] = part
        except BaseException:
            self.budget.give_back(size)
            raise
        finally:
            upload.inflight_parts -= 1
            upload.inflight_bytes -= size
            upload.touched_at = self.clock()
            partial.unlink(missing_ok=True)
        return part

    def _check_open(self, upload: Multipart, multipart_id: str) -> None:
        if self._uploads.get(multipart_id) is not upload:
            raise NotFoundError(f"Multipart upload {multipart_id} expired while this part was arriving.")
        if upload.completing or upload.completed is not None:
            raise _invalid_part(
                f"Multipart upload {multipart_id} is completed (or completing): it takes no more parts."
            )

    async def complete(
        self, multipart_id: str, file_id: str, name: str, listed: Sequence[tuple[int, str]]
    ) -> int:
        """Join the listed parts (``(part number, etag)``, any order) into the upload's file; its size."""
        upload = self.get(multipart_id, file_id, name)
        listing = tuple(sorted((number, etag.strip().strip('"')) for number, etag in listed))
        if upload.completed is not None:
            if listing == upload.completed:
                return upload.size_bytes  # a retried complete whose first answer was lost
            raise _invalid_part(f"Multipart upload {multipart_id} was already completed with other parts.")
        self._check_open(upload, multipart_id)
        self._check_listing(upload, listing)
        upload.completing = True
        try:
            numbers = [number for number, _ in listing]
            if self.objects is None:
                final = self.root / upload.file_id / upload.name
                size = await asyncio.to_thread(self._join, multipart_id, upload, numbers, final)
            else:
                size = await self._join_to_objects(self.objects, multipart_id, upload, numbers)
            await asyncio.to_thread(self.budget.remove_folder, self.parts_root / multipart_id)
        finally:
            upload.completing = False
        upload.completed, upload.size_bytes, upload.parts = listing, size, {}
        upload.touched_at = self.clock()
        logger.info("multipart upload %s/%s: %d parts, %d bytes", file_id, name, len(numbers), size)
        return size

    def _check_listing(self, upload: Multipart, listing: Sequence[tuple[int, str]]) -> None:
        if upload.inflight_parts:
            raise _invalid_part(
                f"{upload.inflight_parts} part upload(s) are still arriving: complete once every part "
                "PUT has answered."
            )
        counts = Counter(number for number, _ in listing)
        if duplicates := sorted(n for n, count in counts.items() if count > 1):
            raise _invalid_part(f"Parts listed more than once: {duplicates}; list each part once.")
        for number, etag in listing:
            part = upload.parts.get(number)
            if part is None:
                uploaded = sorted(upload.parts) or "none"
                raise _invalid_part(f"Part {number} was never uploaded (uploaded parts: {uploaded}).")
            if etag != part.etag:
                raise _invalid_part(
                    f"Part {number}: etag {etag!r} does not match the uploaded part's {part.etag!r}; "
                    "list the ETag its PUT answered."
                )

    async def _join_to_objects(
        self, objects: ObjectStore, multipart_id: str, upload: Multipart, numbers: Sequence[int]
    ) -> int:
        joined = self.root / INCOMING / f"{multipart_id}-{upload.name}"
        size = await asyncio.to_thread(self._join, multipart_id, upload, numbers, joined)
        try:
            key = upload_key(upload.file_id, upload.name)
            await objects.put_file(key, joined, content_type_of(upload.name))
        finally:
            joined.unlink(missing_ok=True)
            self.budget.give_back(size)
        return size

    def _join(self, multipart_id: str, upload: Multipart, numbers: Sequence[int], final: Path) -> int:
        """Join the parts into ``final`` (appearing whole); the parts stay for the caller to delete."""
        folder = self.parts_root / multipart_id
        partial = final.with_name(final.name + ".part")
        what = f"upload {upload.file_id}/{upload.name}"
        size = sum(upload.parts[number].size_bytes for number in numbers)
        self.budget.take(size, what)  # the parts and the joined file are both on disk for a while
        try:
            with self.budget.writing(what):
                final.parent.mkdir(parents=True, exist_ok=True)
                with partial.open("wb") as out:
                    for number in numbers:
                        with (folder / str(number)).open("rb") as part:
                            shutil.copyfileobj(part, out, _JOIN_BUFFER_BYTES)
                partial.replace(final)
        except BaseException:
            self.budget.give_back(size)
            raise
        finally:
            partial.unlink(missing_ok=True)
        return size

    async def sweep(self) -> list[str]:
        """Drop uploads idle for ``ttl_s`` and their parts, and part folders no upload owns that are as
        old (an earlier process's); returns the multipart ids removed."""
        cutoff = self.clock() - self.ttl_s
        expired = [
            multipart_id
            for multipart_id, upload in self._uploads.items()
            if upload.touched_at <= cutoff and not upload.inflight_parts and not upload.completing
        ]
        for multipart_id in expired:
            del self._uploads[multipart_id]
        known = frozenset(self._uploads)
        removed = await asyncio.to_thread(self._remove_folders, expired, known, cutoff)
        if removed:
            logger.info("removed %d abandoned multipart upload(s)", len(removed))
        return removed

    def _remove_folders(self, expired: Sequence[str], known: frozenset[str], cutoff: float) -> list[str]:
        removed = list(expired)
        for folder in self.parts_root.iterdir() if self.parts_root.is_dir() else ():
            if folder.name not in known and folder.name not in expired and folder.stat().st_mtime <= cutoff:
                removed.append(folder.name)
        for multipart_id in removed:
            self.budget.remove_folder(self.parts_root / multipart_id)
        return removed

"""The disk that outputs and uploads share: a byte quota over both folders and a floor of free space on
the disk (the job store lives there too: a full disk must fail a write, not the queue).

Every writer takes its bytes from one ``DiskBudget`` before writing them and gives them back when the
write fails or the files are deleted, so the count stays true without walking the folders per write;
a write that fails with ENOSPC/EDQUOT turns into the same clear 507.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path

from server.errors import DarkroomError, InputError

logger = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageFullError(DarkroomError):
    """No room for a file: the quota is used up or the disk is (nearly) full (507)."""

    status = 507
    code = "storage_full"


class DiskBudget:
    """Bytes held under ``roots`` against ``quota_bytes`` (0: none) and ``min_free_bytes`` of free disk."""

    def __init__(self, roots: Sequence[Path] = (), *, quota_bytes: int = 0, min_free_bytes: int = 0) -> None:
        self.roots = tuple(roots)
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()  # deletions give bytes back from worker threads
        self.used_bytes = sum(folder_bytes(root) for root in self.roots)

    def take(self, size_bytes: int, what: str) -> None:
        """Count ``size_bytes`` about to be written for ``what``; StorageFullError if they do not fit."""
        with self._lock:
            self.check(size_bytes, what)
            self.used_bytes += size_bytes

    def check(self, size_bytes: int, what: str) -> None:
        """Refuse ``size_bytes`` now if they cannot fit (413 past the whole quota, 507 if full)."""
        if self.quota_bytes and size_bytes > self.quota_bytes:
            raise InputError(
                f"{what} is {size_bytes} bytes, more than the whole storage quota of {self.quota_bytes} "
                "bytes (DARKROOM_STORAGE_QUOTA_BYTES).",
                status=413,
                code="file_too_large",
            )
        if self.quota_bytes and self.used_bytes + size_bytes > self.quota_bytes:
            raise StorageFullError(
                f"No room for {what}: the storage quota is used up ({self.used_bytes} of "
                f"{self.quota_bytes} bytes, DARKROOM_STORAGE_QUOTA_BYTES). Space comes back as "
                "results and uploads expire; fetch what you need and retry later.",
                headers={"Retry-After": "60"},
            )
        if self.min_free_bytes and (free := self.free_bytes()) - size_bytes < self.min_free_bytes:
            raise StorageFullError(
                f"No room for {what}: the disk has {free} bytes free and keeps "
                f"{self.min_free_bytes} (DARKROOM_DISK_MIN_FREE_BYTES). Retry later.",
                headers={"Retry-After": "60"},
            )

    def give_back(self, size_bytes: int) -> None:
        """Bytes no longer held: a failed write's, or deleted files'."""
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - size_bytes)

    def free_bytes(self) -> int:
        """Free bytes on the disk holding the first root (an unlimited budget: none needed)."""
        for root in self.roots:
            for folder in (root, *root.parents):
                if folder.exists():
                    return shutil.disk_usage(folder).free
        return 0

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Turn the disk filling up during a write into StorageFullError (the caller removes the partial)."""
        try:
            yield
        except OSError as e:
            if e.errno not in _DISK_FULL:
                raise
            logger.error("disk full writing %s: %s", what, e)
            raise StorageFullError(f"No room for {what}: the disk is full. Retry later.") from e

    def remove_folder(self, folder: Path) -> int:
        """Delete a folder, giving its bytes back; returns them."""
        size = folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        self.give_back(size)
        return size

    def expire(
        self, root: Path, *, older_than_s: float, name_ok: Callable[[str], object], keep: Container[str] = ()
    ) -> list[str]:
        """Delete the folders of ``root`` last written more than ``older_than_s`` ago, except ``keep``
        and names ``name_ok`` refuses; returns their names."""
        cutoff, stale = time.time() - older_than_s, []
        for folder in root.iterdir() if root.is_dir() else ():
            if folder.name in keep or not folder.is_dir() or not name_ok(folder.name):
                continue
            if folder.stat().st_mtime < cutoff:
                self.remove_folder(folder)
                stale.append(folder.name)
        return stale


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it is missing)."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        with contextlib.suppress(OSError):  # deleted meanwhile
            if path.is_file():
                total += path.stat().st_size
    return total

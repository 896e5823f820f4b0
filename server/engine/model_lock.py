"""What this host verified of its model files: the lock file, and the commands that read it.

``<models>/models.lock.json`` records, per manifest entry, the sha256 and size a file had when it was
verified (against the hub's LFS sha256 for the pinned revision, the manifest's pin, or both), the
commit it came from and where it came from (hub, bucket, import). It lives beside the files it
describes, in the data dir, so it moves with them; the manifest in the repository stays the pin.

``verify`` hashes the present files again (in threads, with progress) and deletes one that differs;
``import_path`` brings in files copied from elsewhere (air-gapped hosts), verified before they get
their real names; ``rows`` is what ``darkroom models list`` prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from server.engine.models import FetchError, Manifest, ModelFile
from server.settings import Settings

log = logging.getLogger(__name__)

LOCK_NAME = "models.lock.json"
HASH_THREADS = 4
_CHUNK_BYTES = 8 << 20
_GIB = 1 << 30


class LockEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    sha256: str
    size_bytes: int
    revision: str | None = None  # the commit the file came from, when it came from the hub
    source: Literal["hub", "bucket", "import"]
    verified_at: float  # Unix time


class Lock:
    """The lock file of one models folder; safe to record into from several threads."""

    def __init__(self, models_path: Path) -> None:
        self.path = models_path / LOCK_NAME
        self._mutex = threading.Lock()

    def entries(self) -> dict[str, LockEntry]:
        if not self.path.is_file():
            return {}
        raw = json.loads(self.path.read_text())
        return {name: LockEntry.model_validate(item) for name, item in raw.get("files", {}).items()}

    def record(self, name: str, entry: LockEntry) -> None:
        self._update(lambda files: files.__setitem__(name, entry))

    def forget(self, name: str) -> None:
        self._update(lambda files: files.pop(name, None))

    def _update(self, change: Callable[[dict[str, LockEntry]], object]) -> None:
        with self._mutex:
            files = self.entries()
            change(files)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            body = {"files": {n: e.model_dump() for n, e in sorted(files.items())}}
            partial = self.path.with_name(self.path.name + ".part")
            partial.write_text(json.dumps(body, indent=2) + "\n")
            os.replace(partial, self.path)


class Hasher:
    """sha256 of files, counting the bytes read: a bar on a terminal, else a log line every interval."""

    def __init__(self, total_bytes: int, label: str, interval_s: float = 10.0) -> None:
        self.total_bytes, self.label, self.interval_s = total_bytes, label, interval_s
        self.done_bytes = 0
        self._mutex = threading.Lock()
        self._bar = (
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label) if sys.stderr.isatty() else None
        )
        self._logged_at = time.monotonic()

    def sha256(self, path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                digest.update(chunk)
                self._advance(len(chunk))
        return digest.hexdigest()

    def _advance(self, count: int) -> None:
        with self._mutex:
            self.done_bytes += count
            if self._bar is not None:
                self._bar.update(count)
            elif time.monotonic() - self._logged_at >= self.interval_s:
                self._logged_at = time.monotonic()
                share = 100 * self.done_bytes / max(self.total_bytes, 1)
                log.info("%s: %.2f of %.2f GiB (%.0f%%)", self.label, self.done_bytes / _GIB,
                         self.total_bytes / _GIB, share)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def check(name: str, entry: ModelFile, path: Path, sha256: str, expected: str, what: str) -> None:
    """Delete ``path`` and raise FetchError unless ``sha256`` is ``expected``."""
    if sha256 != expected:
        path.unlink(missing_ok=True)
        raise FetchError(
            f"{name} ({entry.file}): sha256 {sha256} arrived, {what} says {expected}; the file was deleted"
        )


def verify(settings: Settings, manifest: Manifest, names: Iterable[str]) -> list[str]:
    """Hash every present file that has a recorded or pinned sha256; the problems (mismatches deleted)."""
    lock = Lock(settings.models_path)
    recorded = lock.entries()
    todo: list[tuple[str, Path, str, str]] = []
    for name in names:
        entry = manifest.get(name)
        path = settings.models_path / entry.file
        expected, what = _expected(entry, recorded.get(name))
        if path.is_file() and expected and not entry.source.generated:
            todo.append((name, path, expected, what))
    hasher = Hasher(sum(p.stat().st_size for _, p, _, _ in todo), f"verifying {len(todo)} files")
    problems: list[str] = []

    def one(item: tuple[str, Path, str, str]) -> None:
        name, path, expected, what = item
        try:
            check(name, manifest.get(name), path, hasher.sha256(path), expected, what)
            log.info("%s: verified", name)
        except FetchError as e:
            lock.forget(name)
            problems.append(str(e))

    try:
        with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="verify") as pool:
            list(pool.map(one, todo))
    finally:
        hasher.close()
    return problems


def _expected(entry: ModelFile, recorded: LockEntry | None) -> tuple[str | None, str]:
    if entry.sha256:
        return entry.sha256, "the manifest"
    if recorded is not None:
        return recorded.sha256, f"{LOCK_NAME} ({recorded.source}, {time.ctime(recorded.verified_at)})"
    return None, ""


def import_path(settings: Settings, manifest: Manifest, source: Path) -> list[str]:
    """Bring files copied from elsewhere into place (hard-linked, else copied), each verified first.

    A file is matched to the manifest entry of the same file name; its hash must equal the manifest's
    pin, else the one a ``models.lock.json`` beside it records (a connected host's verified copy).
    """
    if not source.exists():
        raise FetchError(f"{source} does not exist")
    by_file_name = {Path(e.file).name: n for n, e in manifest.models.items() if not e.source.generated}
    if source.is_file():
        files = [source]
    else:  # the files named as manifest entries are (.safetensors, an upscaler's .pth); nothing else
        files = sorted(p for p in source.rglob("*") if p.name in by_file_name and p.is_file())
    theirs = Lock(source if source.is_dir() else source.parent).entries()
    lock, imported = Lock(settings.models_path), []
    for path in files:
        name = by_file_name.get(path.name)
        if name is None:
            log.warning("%s: no manifest entry has this file name; skipped", path)
            continue
        entry = manifest.get(name)
        expected, what = _expected(entry, theirs.get(name))
        if expected is None:
            raise FetchError(
                f"{path}: the manifest pins no sha256 for {name} and no {LOCK_NAME} beside it records "
                "one, so it cannot be verified: copy the lock file of the host it came from along"
            )
        target = settings.models_path / entry.file
        staged = _link_or_copy(path, target.with_name(target.name + ".import"))
        hasher = Hasher(staged.stat().st_size, f"importing {name}")
        try:
            check(name, entry, staged, hasher.sha256(staged), expected, what)
        finally:
            hasher.close()
        os.replace(staged, target)
        lock.record(name, LockEntry(file=entry.file, sha256=expected, size_bytes=target.stat().st_size,
                                    source="import", verified_at=time.time()))  # fmt: skip
        imported.append(name)
        log.info("%s: imported from %s", name, path)
    return imported


def _link_or_copy(source: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, dest)
    return dest


def rows(settings: Settings, manifest: Manifest, names: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """(name, file, present|missing, size, verified) for ``darkroom models list``."""
    recorded = Lock(settings.models_path).entries()
    for name in names:
        entry = manifest.get(name)
        path = settings.models_path / entry.file
        size = path.stat().st_size if path.is_file() else entry.size_bytes
        lock = recorded.get(name)
        if entry.source.generated:
            verified = "generated"
        elif lock is None or not path.is_file():
            verified = "no"
        else:
            verified = "yes" if lock.size_bytes == size else "changed since"
        shown = f"{size / _GIB:.2f} GiB" if size is not None else "?"
        yield name, entry.file, "present" if path.is_file() else "missing", shown, verified


@contextlib.contextmanager
def staging_dir(settings: Settings, name: str) -> Iterator[Path]:
    """A folder for one entry's download beside the models (same file system: the rename is atomic);
    kept when the download fails, so the next try resumes, removed once the file is in place."""
    path = settings.models_path / ".fetch" / name
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)

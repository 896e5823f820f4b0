"""``darkroom models fetch``: make manifest entries present, each verified before it gets its real name.

For each missing file: the hub's record of it at the pinned revision (commit, LFS sha256, size) is
checked against the manifest's pins; the free disk space against the sizes of all of them; then the
file comes from the fleet's bucket when one is set and holds it (``SharedModels``: verified again
here), else from the hub (``hub.download``), several files at a time. A file whose bytes do not hash
to the expected sha256 is deleted and the error names both hashes. A verified file is recorded in the
lock file and, when it came from the hub, put into the bucket once for the other hosts.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.engine import hub
from server.engine.model_lock import Hasher, Lock, LockEntry, check, staging_dir
from server.engine.models import FetchError, Manifest, ModelFile, load_manifest
from server.settings import Settings

log = logging.getLogger(__name__)

PARALLEL_FILES = 3
_GB = 1e9


class SharedModels(Protocol):
    """A bucket the hosts of a fleet share: verified model files by sha256, put once, taken by all."""

    def take(self, sha256: str, dest: Path) -> bool:
        """Copy the object for ``sha256`` to ``dest``; False when the bucket has none (or is away)."""
        ...

    def give(self, sha256: str, path: Path) -> None:
        """Put a verified file, unless the bucket has it already."""
        ...


@dataclass(frozen=True)
class _Plan:
    name: str
    entry: ModelFile
    sha256: str  # known before downloading: the manifest's pin, or the hub's
    size_bytes: int | None
    hub_file: hub.HubFile | None  # None when the pins let the bucket answer without asking the hub


def fetch(
    settings: Settings,
    names: Iterable[str],
    *,
    manifest: Manifest | None = None,
    shared: SharedModels | None = None,
    unpinned: bool = False,
) -> list[str]:
    """Fetch the absent entries among ``names``; the names fetched. FetchError names every failure."""
    manifest = manifest or load_manifest()
    plans = [
        _plan(name, manifest.get(name), settings, shared, unpinned)
        for name in _absent(settings, manifest, names)
    ]
    if not plans:
        return []
    _check_free_space(settings, plans)
    lock = Lock(settings.models_path)
    failures: list[str] = []

    def one(plan: _Plan) -> str | None:
        try:
            _fetch_one(plan, settings, lock, shared)
            return plan.name
        except FetchError as e:
            failures.append(str(e))
            return None

    with hub.progress_display(), ThreadPoolExecutor(PARALLEL_FILES, thread_name_prefix="fetch") as pool:
        fetched = [name for name in pool.map(one, plans) if name]
    if failures:
        raise FetchError("; ".join(failures))
    return fetched


def _absent(settings: Settings, manifest: Manifest, names: Iterable[str]) -> list[str]:
    absent = []
    for name in dict.fromkeys(names):
        entry = manifest.get(name)
        if entry.source.generated:
            raise FetchError(f"{name} is generated: run `darkroom models make-tiny`")
        if not (settings.models_path / entry.file).is_file():
            absent.append(name)
    return absent


def _plan(
    name: str, entry: ModelFile, settings: Settings, shared: SharedModels | None, unpinned: bool
) -> _Plan:
    repo, path, revision = entry.source.hf_parts
    if not entry.source.pinned and not unpinned:
        raise FetchError(
            f"{name}: model_manifest.yaml pins no commit for {repo}/{path} (@revision); pass --unpinned "
            f"to take {revision or 'main'} as it is now (the commit, size and sha256 it resolves to are "
            "recorded in the lock file, to copy into the manifest)"
        )
    if shared is not None and entry.sha256 and entry.size_bytes:
        return _Plan(name, entry, entry.sha256, entry.size_bytes, None)  # the bucket may answer alone
    found = hub.describe(entry, settings)
    if entry.source.pinned and found.commit != revision:
        raise FetchError(
            f"{name}: asked for commit {revision}, {settings.hf_endpoint} answered {found.commit}"
        )
    if entry.size_bytes is not None and found.size_bytes != entry.size_bytes:
        raise FetchError(
            f"{name}: the hub has {found.size_bytes} bytes at {found.commit}, "
            f"the manifest pins {entry.size_bytes}"
        )
    if entry.sha256 and found.sha256 and found.sha256 != entry.sha256:
        raise FetchError(
            f"{name}: the hub's sha256 at {found.commit} is {found.sha256}, the manifest pins {entry.sha256}"
        )
    sha256 = entry.sha256 or found.sha256
    if sha256 is None:
        raise FetchError(
            f"{name}: neither the hub (not an LFS file) nor the manifest gives a sha256 to check"
        )
    return _Plan(name, entry, sha256, found.size_bytes, found)


def _check_free_space(settings: Settings, plans: list[_Plan]) -> None:
    needed = sum(p.size_bytes or 0 for p in plans)
    where = settings.models_path
    probe = next(p for p in [where, *where.parents] if p.exists())
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise FetchError(
            f"not enough disk space: {len(plans)} files need {needed} bytes ({needed / _GB:.1f} GB), "
            f"{free} bytes ({free / _GB:.1f} GB) are free at {where} (DARKROOM_MODELS_DIR)"
        )
    log.info("fetching %d files, %.1f GB (%.1f GB free at %s)", len(plans), needed / _GB, free / _GB, where)


def _fetch_one(plan: _Plan, settings: Settings, lock: Lock, shared: SharedModels | None) -> None:
    target = settings.models_path / plan.entry.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(settings, plan.name) as staging:
        if shared is not None and _from_bucket(plan, shared, staging / "bucket.part", target):
            lock.record(plan.name, _locked(plan, target, "bucket", None))
            return
        hub_file = plan.hub_file or hub.describe(plan.entry, settings)
        log.info("%s: downloading %s/%s at %s", plan.name, hub_file.repo, hub_file.path, hub_file.commit)
        downloaded = hub.download(plan.entry, hub_file, settings, staging)
        try:
            _verify(plan, downloaded, plan.sha256, "the hub (X-Linked-Etag)")
        except FetchError:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of these bytes is kept to resume from
            raise
        os.replace(downloaded, target)
        lock.record(plan.name, _locked(plan, target, "hub", hub_file.commit))
        log.info("%s: verified, in place at %s", plan.name, target)
    if shared is not None:
        shared.give(plan.sha256, target)


def _from_bucket(plan: _Plan, shared: SharedModels, part: Path, target: Path) -> bool:
    if not shared.take(plan.sha256, part):
        return False
    try:
        _verify(plan, part, plan.sha256, "the manifest or hub (bucket copy)")
    except FetchError as e:
        log.warning("%s; taking it from the hub instead", e)
        return False
    os.replace(part, target)
    log.info("%s: taken from the shared bucket, verified, in place at %s", plan.name, target)
    return True


def _verify(plan: _Plan, path: Path, expected: str, what: str) -> None:
    size = path.stat().st_size
    if plan.size_bytes is not None and size != plan.size_bytes:
        path.unlink(missing_ok=True)
        raise FetchError(
            f"{plan.name}: {size} bytes arrived, {plan.size_bytes} expected; the file was deleted"
        )
    hasher = Hasher(size, f"verifying {plan.name}")
    try:
        check(plan.name, plan.entry, path, hasher.sha256(path), expected, what)
    finally:
        hasher.close()


def _locked(plan: _Plan, target: Path, source: str, revision: str | None) -> LockEntry:
    return LockEntry.model_validate(
        {
            "file": plan.entry.file,
            "sha256": plan.sha256,
            "size_bytes": target.stat().st_size,
            "revision": revision,
            "source": source,
            "verified_at": time.time(),
        }  # fmt: skip
    )

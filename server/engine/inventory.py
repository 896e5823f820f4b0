"""Which manifest model files are here, how big they are, and whether their bytes match the recorded
sha256: checked in a worker thread, one file at a time, again only when a file's size or mtime changes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.models import Manifest, sha256_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Checked:
    size_bytes: int
    mtime_ns: int
    verified: bool


class ModelInventory:
    """The manifest against the models folder, for the dashboard."""

    def __init__(self, manifest: Manifest, models_dir: Path) -> None:
        self.manifest, self.models_dir = manifest, models_dir
        self._checked: dict[str, _Checked] = {}
        self._checking: asyncio.Task[None] | None = None

    def describe(self) -> list[dict[str, Any]]:
        """Every entry: present or missing, size, hash state (verified, mismatch, checking, unrecorded)."""
        rows = []
        for name, entry in sorted(self.manifest.models.items()):
            path = self.models_dir / entry.file
            stat = path.stat() if path.is_file() else None
            checked = self._checked.get(name)
            if stat is None:
                hashed = "missing"
            elif entry.sha256 is None:
                hashed = "unrecorded"
            elif checked is None or (checked.size_bytes, checked.mtime_ns) != (
                stat.st_size,
                stat.st_mtime_ns,
            ):
                hashed = "checking"
            else:
                hashed = "verified" if checked.verified else "mismatch"
            rows.append({
                "name": name, "file": entry.file, "kind": entry.kind, "present": stat is not None,
                "size_bytes": stat.st_size if stat else entry.size_bytes, "sha256": hashed,
                "fetch": None if entry.source.generated else self.manifest.command_for(name),
            })  # fmt: skip
        if any(r["sha256"] == "checking" for r in rows) and (self._checking is None or self._checking.done()):
            self._checking = asyncio.get_running_loop().create_task(self._check_all())
        return rows

    async def _check_all(self) -> None:
        for name, entry in sorted(self.manifest.models.items()):
            path = self.models_dir / entry.file
            if entry.sha256 is None or not path.is_file():
                continue
            stat = path.stat()
            known = self._checked.get(name)
            if known is not None and (known.size_bytes, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                continue
            digest = await asyncio.to_thread(sha256_of, path)
            self._checked[name] = _Checked(stat.st_size, stat.st_mtime_ns, digest == entry.sha256)
            if digest != entry.sha256:
                logger.warning("%s: %s does not match the manifest's sha256", name, path)

"""Published versions kept as files: ``<root>/<owner>/<name>/<n>.json``, each written whole and never
overwritten (a host's own catalog; a fleet keeps them in its database instead)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from server.errors import ConfigError
from server.workflows.catalog import Version


class VersionFiles:
    """``VersionStore`` on files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def read(self, name: str | None = None) -> list[Version]:
        pattern = f"{name}/*.json" if name is not None else "*/*/*.json"
        versions = [_read(path) for path in self.root.glob(pattern)]
        return sorted(versions, key=lambda v: (v.name, v.number))

    async def add(self, name: str, prompt: dict[str, Any], workflow: dict[str, Any] | None) -> Version:
        numbers = [int(path.stem) for path in (self.root / name).glob("*.json")]
        version = Version(name, max(numbers, default=0) + 1, time.time(), prompt, workflow)
        _write(self.root / name / f"{version.number}.json", version)
        return version

    async def remove(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)


def _read(path: Path) -> Version:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"published workflow file {path} is unreadable: {e}") from e
    return Version(
        data["name"], int(data["version"]), float(data["published_at"]), data["prompt"], data.get("workflow")
    )


def _write(path: Path, version: Version) -> None:
    """Written whole or not at all (a temporary file renamed), never overwritten: versions are immutable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "name": version.name, "version": version.number, "published_at": version.published_at,
        "prompt": version.prompt, "workflow": version.workflow,
    }  # fmt: skip
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(body))
    with partial.open("rb") as f:
        os.fsync(f.fileno())
    os.link(partial, path)  # fails if the version exists: never replace one
    partial.unlink()

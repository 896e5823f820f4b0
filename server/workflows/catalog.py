"""Published workflows: immutable numbered versions in ``<data_dir>/workflows/<owner>/<name>/<n>.json``,
served the moment they are published. ``owner/name`` serves the latest version, ``owner/name@<n>``
pins one; publishing an old version's workflow again is the rollback (it becomes the newest).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.models import Manifest
from server.errors import ConfigError, DarkroomError, NotFoundError, RequestValidationError
from server.workflows.mapping import Endpoint
from server.workflows.published import endpoint_from_prompt

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,38}/[a-z0-9][a-z0-9._-]{0,99}$")
# Leading path segments the queue routes give a meaning of their own (fal's namespaces).
RESERVED_OWNERS = frozenset({"workflows", "comfy"})
PIN = "@"


@dataclass(frozen=True)
class Version:
    """One published version: the editor's workflow (UI format, for reopening it) and the prompt served."""

    name: str
    number: int
    published_at: float
    prompt: dict[str, Any]
    workflow: dict[str, Any] | None

    @property
    def app_id(self) -> str:
        return f"{self.name}{PIN}{self.number}"

    def describe(self) -> dict[str, Any]:
        return {"version": self.number, "app_id": self.app_id, "published_at": self.published_at}


class Catalog:
    """Owns the published workflows on disk and their entries in the app's endpoint table."""

    def __init__(self, root: Path, endpoints: dict[str, Endpoint], manifest: Manifest) -> None:
        self.root = root
        self.endpoints = endpoints
        self.manifest = manifest
        self.builtin = frozenset(endpoints)  # the mappings' endpoints, loaded before the catalog
        self._versions: dict[str, list[Version]] = {}

    def load(self) -> None:
        """Serve every version on disk (checked when it was published, so no worker is needed now)."""
        for path in sorted(self.root.glob("*/*/*.json")):
            version = _read(path)
            self._versions.setdefault(version.name, []).append(version)
        for name, versions in self._versions.items():
            versions.sort(key=lambda v: v.number)
            try:
                self._serve(name)
            except (DarkroomError, ValueError) as e:
                raise ConfigError(
                    f"published workflow {name} in {self.root / name} cannot be served: {e}"
                ) from e
        if self._versions:
            logger.info("serving %d published workflow(s) from %s", len(self._versions), self.root)

    def publish(
        self, name: str, prompt: Any, workflow: dict[str, Any] | None, node_types: Mapping[str, Any]
    ) -> Version:
        """Check ``prompt`` against the workers' nodes and models, store it as the next version, serve it."""
        self._check_name(name)
        endpoint_from_prompt(name, prompt, node_types=node_types, manifest=self.manifest)
        versions = self._versions.setdefault(name, [])
        version = Version(name, (versions[-1].number if versions else 0) + 1, time.time(), prompt, workflow)
        _write(self._path(version), version)
        versions.append(version)
        self._serve(name)
        logger.info("published %s version %d", name, version.number)
        return version

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, oldest first; 404 if it is not published."""
        versions = self._versions.get(name)
        if not versions:
            raise NotFoundError(
                f"No published workflow {name!r}; published: {', '.join(self.names()) or 'none'}"
            )
        return list(versions)

    def version(self, name: str, number: int) -> Version:
        for version in self.versions(name):
            if version.number == number:
                return version
        raise NotFoundError(
            f"{name} has no version {number}; it has {[v.number for v in self.versions(name)]}"
        )

    def unpublish(self, name: str) -> list[Version]:
        """Stop serving ``name`` (every version) and delete its files; returns what was removed."""
        versions = self.versions(name)
        for app_id in [name, *(v.app_id for v in versions)]:
            self.endpoints.pop(app_id, None)
        del self._versions[name]
        shutil.rmtree(self.root / name, ignore_errors=True)
        logger.info("unpublished %s (%d version(s))", name, len(versions))
        return versions

    def _serve(self, name: str) -> None:
        versions = self._versions[name]
        for version in versions:
            self.endpoints[version.app_id] = self._endpoint(version.app_id, version)
        self.endpoints[name] = self._endpoint(name, versions[-1])

    def _endpoint(self, app_id: str, version: Version) -> Endpoint:
        return endpoint_from_prompt(app_id, version.prompt, node_types=None, manifest=self.manifest)

    def _check_name(self, name: str) -> None:
        problem = _name_problem(name, self.builtin)
        if problem:
            raise RequestValidationError([{"loc": ["body", "name"], "msg": problem, "type": "name"}])

    def _path(self, version: Version) -> Path:
        return self.root / version.name / f"{version.number}.json"


def _name_problem(name: str, builtin: Iterable[str]) -> str | None:
    if not NAME.match(name):
        return (
            f"name must be owner/name in lower case (a-z, 0-9, '-', and '.' or '_' in the name), got {name!r}"
        )
    if name.split("/")[0] in RESERVED_OWNERS:
        return f"owner {name.split('/')[0]!r} is reserved (the queue routes use it); pick another owner"
    for app_id in builtin:
        if name == app_id or app_id.startswith(name + "/") or name.startswith(app_id + "/"):
            return f"name {name!r} collides with the built-in endpoint {app_id!r}; pick another name"
    return None


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

"""Published workflows: immutable numbered versions, served the moment they are published.
``owner/name`` serves the latest version, ``owner/name@<n>`` pins one; publishing an old version's
workflow again is the rollback (it becomes the newest). The versions are kept by a ``VersionStore``:
files under the data dir (``version_files.py``), or a fleet's database, where every host serves what
any host published (``server/queue/fleet_workflows.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from server.engine.models import Manifest
from server.engine.pack_check import needed_packs
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
        return {
            "version": self.number, "app_id": self.app_id, "published_at": self.published_at,
            "node_packs": needed_packs(self.prompt),
        }  # fmt: skip


class VersionStore(Protocol):
    """Where published versions are kept: files under the data dir on one host, the fleet's database
    in a fleet (where a change also reaches every other host's catalog)."""

    async def read(self, name: str | None = None) -> list[Version]:
        """Every version (of ``name`` alone if given), by name, oldest first."""
        ...

    async def add(self, name: str, prompt: dict[str, Any], workflow: dict[str, Any] | None) -> Version:
        """Keep the next version of ``name`` (one more than its newest, 1 for a new name)."""
        ...

    async def remove(self, name: str) -> None:
        """Delete every version of ``name``."""
        ...


class Catalog:
    """Owns the published workflows in ``store`` and their entries in the app's endpoint table."""

    def __init__(self, store: VersionStore, endpoints: dict[str, Endpoint], manifest: Manifest) -> None:
        self.store = store
        self.endpoints = endpoints
        self.manifest = manifest
        self.builtin = frozenset(endpoints)  # the mappings' endpoints, loaded before the catalog
        self.observers: list[Callable[[str], None]] = []  # told each name whose versions changed
        self._versions: dict[str, list[Version]] = {}
        self._lock = asyncio.Lock()  # one change at a time: a read and its serving stay together

    async def load(self) -> None:
        """Serve every version kept (checked when it was published, so no worker is needed now)."""
        for name, versions in _by_name(await self.store.read()).items():
            try:
                self._serve(name, versions)
            except (DarkroomError, ValueError) as e:
                raise ConfigError(f"published workflow {name} cannot be served: {e}") from e
        if self._versions:
            logger.info("serving %d published workflow(s)", len(self._versions))

    async def publish(
        self, name: str, prompt: Any, workflow: dict[str, Any] | None, node_types: Mapping[str, Any]
    ) -> Version:
        """Check ``prompt`` against the workers' nodes and models, keep it as the next version, serve it."""
        self._check_name(name)
        endpoint_from_prompt(name, prompt, node_types=node_types, manifest=self.manifest)
        async with self._lock:
            version = await self.store.add(name, prompt, workflow)
            await self._reload(name)  # with any version another host of a fleet added meanwhile
        logger.info("published %s version %d", name, version.number)
        return version

    async def unpublish(self, name: str) -> list[Version]:
        """Stop serving ``name`` (every version) and delete it; returns what was removed."""
        versions = self.versions(name)
        async with self._lock:
            await self.store.remove(name)
            self._unserve(name)
            self._tell(name)
        logger.info("unpublished %s (%d version(s))", name, len(versions))
        return versions

    async def refresh(self, name: str | None = None) -> None:
        """Serve what the store holds now for ``name`` (every name if None): another host changed it."""
        async with self._lock:
            if name is not None:
                await self._reload(name)
                return
            fresh = _by_name(await self.store.read())
            for each in sorted(set(self._versions) | set(fresh)):
                self._replace(each, fresh.get(each, []))

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

    async def _reload(self, name: str) -> None:
        self._replace(name, await self.store.read(name))

    def _replace(self, name: str, versions: list[Version]) -> None:
        if versions == self._versions.get(name, []):
            return
        self._unserve(name)
        if versions:
            try:
                self._serve(name, versions)
            except (DarkroomError, ValueError) as e:  # kept by another host, unservable here
                logger.error("published workflow %s cannot be served on this host: %s", name, e)
        self._tell(name)

    def _serve(self, name: str, versions: list[Version]) -> None:
        served = {v.app_id: self._endpoint(v.app_id, v) for v in versions}
        served[name] = self._endpoint(name, versions[-1])
        self.endpoints.update(served)  # only once every version is servable
        self._versions[name] = versions

    def _unserve(self, name: str) -> None:
        for version in self._versions.pop(name, []):
            self.endpoints.pop(version.app_id, None)
        self.endpoints.pop(name, None)

    def _tell(self, name: str) -> None:
        for observer in self.observers:
            observer(name)

    def _endpoint(self, app_id: str, version: Version) -> Endpoint:
        return endpoint_from_prompt(app_id, version.prompt, node_types=None, manifest=self.manifest)

    def _check_name(self, name: str) -> None:
        problem = _name_problem(name, self.builtin)
        if problem:
            raise RequestValidationError([{"loc": ["body", "name"], "msg": problem, "type": "name"}])


def _by_name(versions: list[Version]) -> dict[str, list[Version]]:
    grouped: dict[str, list[Version]] = {}
    for version in sorted(versions, key=lambda v: (v.name, v.number)):
        grouped.setdefault(version.name, []).append(version)
    return grouped


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

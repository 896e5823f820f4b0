"""LoRA files named by a request: a name in the LoRA folder, an https URL, or hf://owner/repo/file[@rev].

Remote files are downloaded once into `<models>/loras/cache/<sha256>.safetensors` (content-addressed,
shared by every worker), with an index from URL to hash so a second request for the same URL costs
nothing, and one download at a time per URL however many requests ask at once. Downloads use the
input-URL address policy, a size limit, and never show a partial file under its final name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from yarl import URL

from server.engine.models import sha256_of
from server.errors import InputError
from server.media import inputs
from server.security import netpolicy
from server.settings import Settings

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"
_INDEX = "index.json"


class LoraCache:
    """Turns request LoRA entries into names the LoRA stack node loads from the LoRA folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.models_path / "loras"
        self.cache = self.folder / CACHE_FOLDER
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0  # for tests and metrics: how many files were actually fetched

    def local_files(self, *, limit: int = 1000) -> list[str]:
        """Names a request may give as ``path``: the LoRA folder's .safetensors files (not the download
        cache), sorted, at most ``limit``."""
        if not self.folder.is_dir():
            return []
        names = (
            p.relative_to(self.folder).as_posix()
            for p in self.folder.rglob("*.safetensors")
            if p.is_file() and not p.is_relative_to(self.cache)
        )
        return sorted(names)[:limit]

    async def resolve(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same entries with `path` replaced by a file name inside the LoRA folder."""
        resolved = []
        for entry in entries:
            name = await self._name_for(entry["path"], entry.get("sha256"))
            resolved.append({**{k: v for k, v in entry.items() if k != "sha256"}, "path": name})
        return resolved

    async def _name_for(self, path: str, sha256: str | None) -> str:
        if path.startswith(("https://", "http://")):
            return await self._cached(path, sha256)
        if path.startswith("hf://"):
            return await self._cached(self._hf_url(path), sha256)
        return self._local(path, sha256)

    def _local(self, name: str, sha256: str | None) -> str:
        target = (self.folder / name).resolve()
        try:
            found = target.is_relative_to(self.folder.resolve()) and target.is_file()
        except OSError:  # a name too long for the file system, say: no such file either
            found = False
        if not found:
            raise InputError(
                f"LoRA {name!r} is not a file in the LoRA folder; give a file name there, "
                "an https:// URL or hf://owner/repo/file[@revision]"
            )
        if sha256 and sha256_of(target) != sha256:
            raise InputError(f"LoRA {name!r} does not match the sha256 given with it")
        return name

    def _hf_url(self, path: str) -> str:
        spec, _, revision = path.removeprefix("hf://").partition("@")
        parts = spec.split("/", 2)
        segments = spec.split("/") + (revision.split("/") if revision else [])
        if len(parts) != 3 or not all(segments) or {".", ".."} & set(segments) or "\\" in path:
            raise InputError(
                f"{path!r}: expected hf://owner/repo/path/to/file.safetensors[@revision] "
                "(no empty, . or .. parts)"
            )
        owner, repo, file = parts
        return f"{self.settings.hf_endpoint.rstrip('/')}/{owner}/{repo}/resolve/{revision or 'main'}/{file}"

    async def _cached(self, url: str, sha256: str | None) -> str:
        # The policy applies to cached URLs too, so changing it takes effect at once (names are
        # checked again when the download resolves them).
        schemes = ("https", "http") if self.settings.inputs_allow_http else ("https",)
        netpolicy.check_url(URL(url), netpolicy.AddressPolicy.from_settings(self.settings), schemes=schemes)
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            known = self._index().get(url)
            if known and (self.cache / f"{known}.safetensors").is_file():
                if sha256 and known != sha256:
                    raise InputError(f"LoRA {url} has sha256 {known}, not the {sha256} given with it")
                return f"{CACHE_FOLDER}/{known}.safetensors"
            digest = await self._download(url, sha256)
            self._remember(url, digest)
            return f"{CACHE_FOLDER}/{digest}.safetensors"

    async def _download(self, url: str, sha256: str | None) -> str:
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = self.cache / ".incoming"
        policy = netpolicy.AddressPolicy.from_settings(self.settings)
        async with netpolicy.guarded_session(policy) as session:
            found = await inputs.fetch_input(
                url,
                settings=self.settings,
                session=session,
                dest_dir=staging,
                max_bytes=self.settings.lora_max_bytes,
            )
        try:
            digest = await asyncio.to_thread(sha256_of, found.path)
            if sha256 and digest != sha256:
                raise InputError(f"LoRA {url} has sha256 {digest}, not the {sha256} given with it")
            os.replace(found.path, self.cache / f"{digest}.safetensors")
        finally:
            found.path.unlink(missing_ok=True)
        self.downloads += 1
        log.info("LoRA %s cached as %s (%d bytes)", url, digest, found.size_bytes)
        return digest

    def _index(self) -> dict[str, str]:
        try:
            index: dict[str, str] = json.loads((self.cache / _INDEX).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return index

    def _remember(self, url: str, digest: str) -> None:
        index = {**self._index(), url: digest}
        partial = self.cache / f"{_INDEX}.part"
        partial.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(partial, self.cache / _INDEX)

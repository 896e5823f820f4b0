"""LoRA files named by a request: a name in the LoRA folder, an https URL, or hf://owner/repo/file[@rev].

Remote files are downloaded once into `<models>/loras/cache/<sha256>.safetensors` (content-addressed,
shared by every worker), with an index from URL to hash so a second request for the same URL costs
nothing, and one download at a time per URL however many requests ask at once. Downloads use the
input-URL address policy, a size limit, and never show a partial file under its final name.

With a shared object store (``storage_url``) the cache has a second level there, so one host's download
serves every host: ``loras/<sha256>.safetensors`` (content-addressed) and ``loras/urls/<sha256 of the
URL>`` (the content's hash). A host that misses locally looks there (by the ``sha256`` given with the
entry, else by URL), copies the file into its local cache and checks its hash; the worker always loads
a local file. A store that fails only costs the sharing: the LoRA is downloaded from its URL instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from server.engine.models import sha256_of
from server.errors import InputError, NotFoundError
from server.media import inputs
from server.media.objects import ObjectStore, StorageUnavailableError
from server.security import netpolicy, untrusted
from server.settings import Settings

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"
TRAINED_FOLDER = "trained"  # LoRAs this server trained (``adopt``): listed, and loaded by their URL
TRAINED_ROOT = "trained-loras"  # the data dir's LoRA folder for them (the workers' second one)
_INDEX = "index.json"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class LoraCache:
    """Turns request LoRA entries into names the LoRA stack node loads from the LoRA folder."""

    def __init__(self, settings: Settings, objects: ObjectStore | None = None) -> None:
        self.settings = settings
        self.objects = objects
        self.folder = settings.models_path / "loras"
        self.cache = self.folder / CACHE_FOLDER
        self.trained = settings.data_path / TRAINED_ROOT  # holds trained/<request id>.safetensors
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0  # for tests and metrics: how many files were actually fetched
        self.shared_copies = 0  # how many came from the object store instead

    def local_files(self, *, limit: int = 1000) -> list[str]:
        """Names a request may give as ``path``: the LoRA folder's .safetensors files (not the download
        cache), sorted, at most ``limit``."""
        names = [
            p.relative_to(root).as_posix()
            for root in (self.folder, self.trained)
            if root.is_dir()
            for p in root.rglob("*.safetensors")
            if p.is_file() and not p.is_relative_to(self.cache)
        ]
        return sorted(names)[:limit]

    async def resolve(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same entries with `path` replaced by a file name inside the LoRA folder."""
        resolved = []
        for entry in entries:
            name = await self._name_for(entry["path"], entry.get("sha256"))
            resolved.append({**{k: v for k, v in entry.items() if k != "sha256"}, "path": name})
        return resolved

    def adopt(self, url: str, data: bytes, request_id: str) -> str:
        """Keep a LoRA this server trained in the LoRA folder (``trained/<request id>.safetensors``, so the
        playground's picker lists it) and remember the /files URL it was answered under: a request that
        names that URL loads this file, with no download. Returns its name in the folder."""
        name = f"{TRAINED_FOLDER}/{untrusted.check_name(request_id)}.safetensors"
        target = self.trained / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        _write_index(self.trained / _INDEX, {**self._trained(), url: name})
        log.info("trained LoRA %s kept as %s (%d bytes)", url, name, len(data))
        return name

    def _trained(self) -> dict[str, str]:
        return _read_index(self.trained / _INDEX)

    async def _name_for(self, path: str, sha256: str | None) -> str:
        if (trained := self._trained().get(path)) is not None:
            return self._local(trained, sha256)
        if path.startswith(("https://", "http://")):
            return await self._cached(path, sha256)
        if path.startswith("hf://"):
            return await self._cached(self._hf_url(path), sha256)
        return self._local(path, sha256)

    def _local(self, name: str, sha256: str | None) -> str:
        found = False
        for root in (self.folder, self.trained):
            try:
                target = (root / untrusted.check_name(name)).resolve()
                found = target.is_relative_to(root.resolve()) and target.is_file()
            except (OSError, ValueError):  # a name no file system holds (too long, a NUL): no such file
                found = False
            if found:
                break
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
        try:
            parsed = untrusted.parse_url(url)
        except untrusted.UrlError as e:  # an hf:// path whose parts make no URL
            raise InputError(f"LoRA {url!r} cannot be fetched: {e}") from e
        netpolicy.check_url(parsed, netpolicy.AddressPolicy.from_settings(self.settings), schemes=schemes)
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            known = self._index().get(url)
            if known and (self.cache / f"{known}.safetensors").is_file():
                if sha256 and known != sha256:
                    raise InputError(f"LoRA {url} has sha256 {known}, not the {sha256} given with it")
                return f"{CACHE_FOLDER}/{known}.safetensors"
            digest = await self._from_objects(url, sha256)
            if digest is None:
                digest = await self._download(url, sha256)
                await self._share(url, digest)
            self._remember(url, digest)
            return f"{CACHE_FOLDER}/{digest}.safetensors"

    async def _from_objects(self, url: str, sha256: str | None) -> str | None:
        """The hash of the LoRA for ``url`` once copied from the object store into the local cache; None
        if the store does not have it (or fails, or holds a file whose hash is wrong)."""
        if self.objects is None:
            return None
        try:
            digest = sha256 or await self._shared_digest(self.objects, url)
            if digest is None or not _DIGEST.match(digest):
                return None
            if not (self.cache / f"{digest}.safetensors").is_file():
                if await self.objects.head(_lora_key(digest)) is None:
                    return None
                if not await self._copy_shared(self.objects, digest):
                    return None
        except StorageUnavailableError as e:
            log.warning("LoRA %s: the object store failed (%s); downloading it instead", url, e)
            return None
        if sha256 is None or digest == sha256:
            return digest
        raise InputError(f"LoRA {url} has sha256 {digest}, not the {sha256} given with it")

    async def _shared_digest(self, objects: ObjectStore, url: str) -> str | None:
        try:
            return (await objects.read(_url_key(url))).decode("ascii", "replace").strip()
        except NotFoundError:
            return None

    async def _copy_shared(self, objects: ObjectStore, digest: str) -> bool:
        staging = self.cache / ".incoming"
        staging.mkdir(parents=True, exist_ok=True)
        partial = staging / f"{digest}.{secrets.token_hex(4)}.part"
        try:
            await objects.download(_lora_key(digest), partial)
            if await asyncio.to_thread(sha256_of, partial) != digest:
                log.warning("LoRA %s in %s does not match its hash; ignoring it", digest, objects.url)
                return False
            os.replace(partial, self.cache / f"{digest}.safetensors")
        finally:
            partial.unlink(missing_ok=True)
        self.shared_copies += 1
        log.info("LoRA %s copied from %s", digest, objects.url)
        return True

    async def _share(self, url: str, digest: str) -> None:
        """Put a downloaded LoRA in the object store for the other hosts (a failure only logs)."""
        if self.objects is None:
            return
        try:
            if await self.objects.head(_lora_key(digest)) is None:
                path = self.cache / f"{digest}.safetensors"
                await self.objects.put_file(_lora_key(digest), path, "application/octet-stream")
            await self.objects.put(_url_key(url), digest.encode(), "text/plain")
        except StorageUnavailableError as e:
            log.warning("LoRA %s not shared: the object store failed (%s)", url, e)

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
        return _read_index(self.cache / _INDEX)

    def _remember(self, url: str, digest: str) -> None:
        _write_index(self.cache / _INDEX, {**self._index(), url: digest})


def _read_index(path: Path) -> dict[str, str]:
    try:
        index: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return index


def _write_index(path: Path, index: dict[str, str]) -> None:
    partial = path.with_name(f"{path.name}.part")
    partial.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(partial, path)


def _lora_key(digest: str) -> str:
    return f"loras/{digest}.safetensors"


def _url_key(url: str) -> str:
    return f"loras/urls/{hashlib.sha256(url.encode()).hexdigest()}"

"""Third-party ComfyUI node packs, locked: ``<data dir>/node_packs.yaml`` lists each pack's source (a git
URL or a local git repository), the exact commit, a content hash of the installed tree and its Python
requirements as resolved. Packs are checked out under ``<data dir>/node_packs/nodes/<name>`` (a custom-
nodes folder the workers get through ComfyUI's extra_model_paths.yaml, never ComfyUI's own tree) and
their requirements installed into ``<data dir>/node_packs/site`` (on the workers' PYTHONPATH), resolved
by pip against a constraints file of everything the workers' environment already holds (torch, ComfyUI's
requirements, darkroom's pins, earlier packs' requirements), so a pack cannot change any of them: one
that would is refused naming the conflict, and nothing of it stays.

Adding a pack runs its code in the workers: only the operator does it (``darkroom nodes``, or an admin key
through ``/nodes``: server/api/node_packs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from server.errors import DarkroomError
from server.settings import PROJECT_ROOT, Settings

LOCK_NAME = "node_packs.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
NAME_PATTERN = _NAME.pattern
_SKIPPED = {".git", "__pycache__"}
_PIP_TIMEOUT_S = 900


class PackError(DarkroomError):
    """A node pack could not be installed, removed or synced; the message says why and what to do."""

    status = 422
    code = "node_pack_error"


class PackNotFoundError(PackError):
    """No pack of that name is locked."""

    status = 404
    code = "node_pack_not_found"


@dataclass(frozen=True)
class LockedPack:
    """One pack in the lock."""

    name: str
    source: str
    commit: str
    sha256: str  # content_hash() of the installed tree
    requirements: tuple[str, ...]  # what pip installed for it, ``name==version``

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "requirements": list(self.requirements)}


@dataclass(frozen=True)
class PackPaths:
    """Where one data dir keeps its packs."""

    lock: Path
    nodes: Path  # the custom-nodes folder: one folder per pack
    site: Path  # the packs' requirements (a pip --target folder)

    @classmethod
    def of(cls, settings: Settings) -> PackPaths:
        root = settings.data_path / "node_packs"
        return cls(settings.data_path / LOCK_NAME, root / "nodes", root / "site")


def read_lock(path: Path) -> dict[str, LockedPack]:
    """The packs in the lock at ``path`` (none if there is no lock yet), by name."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    packs = {}
    for entry in data.get("packs") or []:
        pack = LockedPack(**{**entry, "requirements": tuple(entry.get("requirements") or ())})
        packs[pack.name] = pack
    return packs


def write_lock(path: Path, packs: Mapping[str, LockedPack]) -> None:
    """Write the lock atomically (a reader sees the old lock or the new one)."""
    data = {"packs": [packs[name].describe() for name in sorted(packs)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def lock_digest(packs: Mapping[str, LockedPack]) -> str:
    """A digest of the lock's content: hosts compare it to know whether they have converged."""
    text = json.dumps([packs[n].describe() for n in sorted(packs)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def content_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes (``.git`` and ``__pycache__`` left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if not _SKIPPED & set(p.relative_to(root).parts)):
        if path.is_file() and not path.is_symlink():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def split_source(spec: str) -> tuple[str, str | None]:
    """``SOURCE[@REV]`` -> (source, rev); an ``@`` inside a URL's host part (``git@host:x``) is no rev."""
    source, sep, rev = spec.rpartition("@")
    if sep and source and rev and "/" not in rev and ":" not in rev:
        return source, rev
    return spec, None


def pack_name(source: str) -> str:
    """The folder name of a pack: its source's last path segment, ``.git`` dropped."""
    name = source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    if not _NAME.fullmatch(name):
        raise PackError(f"cannot name a node pack after {source!r}: its last path segment must be letters, "
                        "digits, _ or - (at most 100)")  # fmt: skip
    return name


def _run(command: list[str], what: str, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=env, timeout=_PIP_TIMEOUT_S
    )
    if result.returncode != 0:
        raise PackError(f"{what} failed: {_why(result.stdout + result.stderr)}")
    return result.stdout


def _why(stderr: str) -> str:
    """pip's or git's reason, the conflict lines of a ResolutionImpossible kept."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    kept = [
        line for line in lines
        if line.startswith(("ERROR:", "fatal:", "error:", "The user requested", "The conflict is caused by"))
        or " depends on " in line
    ]  # fmt: skip
    return "; ".join(kept or lines[-3:])


def checkout(source: str, rev: str | None, dest: Path) -> str:
    """Clone ``source`` into ``dest`` at ``rev`` (default branch if None); the commit, ``.git`` removed."""
    _run(["git", "clone", "--quiet", "--", source, str(dest)], f"git clone {source}")
    if rev:
        _run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", rev], f"git checkout {rev}")
    commit = _run(["git", "-C", str(dest), "rev-parse", "HEAD"], "git rev-parse").strip()
    shutil.rmtree(dest / ".git")
    return commit


# Where a fleet keeps its lock (server/queue/fleet_packs.py): written before this host's, so a running
# server here, converging to the fleet's, never sees its own lock ahead of the fleet's and reverts it.
LockShare = Callable[[Mapping[str, LockedPack]], None]


class Installer:
    """Installs, removes and syncs the packs of one data dir for workers run by ``python``."""

    def __init__(
        self, settings: Settings, *, python: str = sys.executable, share: LockShare | None = None
    ) -> None:
        self.paths = PackPaths.of(settings)
        self.python = python
        self.share = share  # a fleet's: told each new lock before this host writes it

    def _write(self, packs: Mapping[str, LockedPack]) -> None:
        if self.share is not None:
            self.share(packs)
        write_lock(self.paths.lock, packs)

    def locked(self) -> dict[str, LockedPack]:
        return read_lock(self.paths.lock)

    def environ(self) -> dict[str, str]:
        """The environment pip runs in: the workers' (their PYTHONPATH includes the packs' site)."""
        return {**os.environ, "PYTHONPATH": worker_pythonpath(self.paths, os.environ)}

    def add(self, spec: str, name: str | None = None) -> LockedPack:
        """Install ``SOURCE[@REV]`` and lock it as ``name`` (default: the source's last path segment),
        replacing the pack of that name only if it came from the same source; all or nothing."""
        source, rev = split_source(spec)
        if source.startswith("-") or (rev or "").startswith("-"):
            raise PackError(f"a node pack source or revision cannot start with '-': {spec!r}")
        if name is not None and not _NAME.fullmatch(name):
            raise PackError(f"node pack name {name!r} is not allowed: letters, digits, _ or - (at most 100)")
        name = name or pack_name(source)
        if not ("://" in source or source.startswith("git@")):
            source = str(Path(source).resolve())
        taken = self.locked().get(name)
        if taken is not None and taken.source != source:
            raise PackError(
                f"node pack name {name!r} is taken by the pack from {taken.source}; {source} would replace "
                f"it. Give this one another name (`darkroom nodes add {spec} --name OTHER`) or remove that "
                f"one first (`darkroom nodes remove {name}`)"
            )
        with self._staging() as staging:
            commit = checkout(source, rev, staging / name)
            requirements = self._install_requirements(name, staging / name, staging / "site")
            pack = LockedPack(name, source, commit, content_hash(staging / name), requirements)
            self._commit(staging, pack)
        packs = self.locked()
        packs[name] = pack
        self._write(packs)
        return pack

    def remove(self, name: str) -> LockedPack:
        """Unlock and delete a pack (its requirements stay in the site folder: others may share them)."""
        packs = self.locked()
        if name not in packs:
            installed = ", ".join(sorted(packs)) or "none"
            raise PackNotFoundError(f"no node pack {name!r} is installed; installed: {installed}")
        pack = packs.pop(name)
        self._write(packs)
        shutil.rmtree(self.paths.nodes / name, ignore_errors=True)
        return pack

    def sync(self, packs: Mapping[str, LockedPack] | None = None) -> list[str]:
        """Make the installed packs exactly the lock's (``packs`` given: write it as the lock first);
        returns the names (re)installed. A checkout whose content differs from the lock is an error."""
        if packs is not None:
            write_lock(self.paths.lock, packs)
        packs = self.locked()
        if self.paths.nodes.exists():
            for folder in self.paths.nodes.iterdir():
                if folder.name not in packs:
                    shutil.rmtree(folder, ignore_errors=True)
        changed = []
        for pack in packs.values():
            folder = self.paths.nodes / pack.name
            if folder.is_dir() and content_hash(folder) == pack.sha256:
                continue
            with self._staging() as staging:
                checkout(pack.source, pack.commit, staging / pack.name)
                found = content_hash(staging / pack.name)
                if found != pack.sha256:
                    raise PackError(f"node pack {pack.name} at {pack.commit} from {pack.source} has content "
                                    f"{found}, not the locked {pack.sha256}")  # fmt: skip
                if pack.requirements:
                    self._pip_target(list(pack.requirements), staging / "site")
                self._commit(staging, pack)
            changed.append(pack.name)
        return changed

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        self.paths.nodes.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=self.paths.nodes.parent) as tmp:
            yield Path(tmp)

    def _commit(self, staging: Path, pack: LockedPack) -> None:
        """Move a staged pack (and its staged requirements) into place."""
        self.paths.nodes.mkdir(parents=True, exist_ok=True)
        self.paths.site.mkdir(parents=True, exist_ok=True)
        if (staging / "site").is_dir():
            for entry in (staging / "site").iterdir():
                target = self.paths.site / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                entry.replace(target)
        folder = self.paths.nodes / pack.name
        if folder.exists():
            shutil.rmtree(folder)
        (staging / pack.name).replace(folder)

    def _install_requirements(self, name: str, folder: Path, target: Path) -> tuple[str, ...]:
        """Resolve the pack's requirements.txt against the workers' pinned environment; stage what is new."""
        requirements = folder / "requirements.txt"
        if not requirements.is_file():
            return ()
        constraints = target.parent / "constraints.txt"
        constraints.write_text(self._constraints(), encoding="utf-8")
        report = target.parent / "report.json"
        try:
            _run(
                [self.python, "-m", "pip", "install", "--dry-run", "--report", str(report),
                 "-c", str(constraints), "-r", str(requirements)],
                f"resolving node pack {name}'s requirements against the workers' pinned environment "
                "(torch, ComfyUI's and darkroom's pins, other packs' requirements)",
                env=self.environ(),
            )  # fmt: skip
        except PackError as e:
            raise PackError(f"node pack {name} is refused, nothing was installed: {e.message}") from e
        wanted = [
            f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(report.read_text(encoding="utf-8")).get("install", [])
        ]
        if wanted:
            self._pip_target(wanted, target)
        return tuple(sorted(wanted))

    def _pip_target(self, pins: list[str], target: Path) -> None:
        _run(
            [self.python, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *pins],
            f"installing {' '.join(pins)}",
            env=self.environ(),
        )

    def _constraints(self) -> str:
        """Every distribution the workers' environment holds, pinned, plus darkroom's constraints.txt."""
        frozen = _run(
            [self.python, "-m", "pip", "list", "--format=freeze", "--exclude-editable"],
            "listing the workers' environment",
            env=self.environ(),
        )
        ours = (PROJECT_ROOT / "constraints.txt").read_text(encoding="utf-8")
        return frozen + "\n" + ours


def worker_pythonpath(paths: PackPaths, environ: Mapping[str, str]) -> str:
    """The workers' PYTHONPATH: the packs' requirements folder, then whatever was set."""
    return os.pathsep.join(p for p in (str(paths.site), environ.get("PYTHONPATH", "")) if p)

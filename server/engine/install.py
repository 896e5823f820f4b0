"""Install the pinned ComfyUI: an existing tree, the cached source archive, or a download into that cache."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from server.settings import PINNED_COMFYUI_VERSION, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

ARCHIVE_URL = "https://github.com/comfyanonymous/ComfyUI/archive/{commit}.tar.gz"
# torch and torchvision are installed by the Makefile with exact pins; torchaudio is optional.
_SKIPPED_REQUIREMENTS = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$", re.IGNORECASE)
_COMPLETE_MARKER = ".darkroom-complete"


class ComfyInstallError(RuntimeError):
    """ComfyUI could not be found, fetched or installed; the message says what to do."""


def ensure_comfyui(settings: Settings, *, install_requirements: bool = True) -> Path:
    """Return the root of a usable ComfyUI tree, installing the pinned one if needed."""
    if settings.comfyui_dir:
        root = _existing_install(Path(settings.comfyui_dir))
    else:
        root = settings.managed_comfyui_path
        if not (root / _COMPLETE_MARKER).exists():
            archive = archive_path(settings)
            if not archive.exists():
                _download(settings.comfyui_commit, archive)
            _extract(archive, settings.comfyui_commit, root)
    if install_requirements:
        _install_requirements(root, settings.data_path)
    return root


def archive_path(settings: Settings) -> Path:
    return settings.cache_path / f"comfyui-{settings.comfyui_commit}.tar.gz"


def comfyui_version(root: Path) -> str | None:
    """The version string from comfyui_version.py, or None if the tree has none."""
    version_file = root / "comfyui_version.py"
    if not version_file.exists():
        return None
    match = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text())
    return match.group(1) if match else None


def _existing_install(root: Path) -> Path:
    root = root.resolve()
    if not (root / "main.py").exists():
        raise ComfyInstallError(
            f"DARKROOM_COMFYUI_DIR={root} is not a ComfyUI tree (no main.py). "
            "Point it at a ComfyUI checkout, or unset it to use the managed install."
        )
    version = comfyui_version(root)
    if version != PINNED_COMFYUI_VERSION:
        log.warning(
            "ComfyUI at %s is version %s; darkroom is pinned to %s and tested only there",
            root,
            version or "unknown",
            PINNED_COMFYUI_VERSION,
        )
    return root


def _download(commit: str, archive: Path) -> None:
    url = ARCHIVE_URL.format(commit=commit)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".part")
    log.info("downloading ComfyUI %s from %s", commit, url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise ComfyInstallError(
            f"ComfyUI {commit} is not in the download cache and could not be downloaded ({e}). "
            f"Put its source archive (one top folder ComfyUI-{commit}/) at {archive}, "
            "or set DARKROOM_COMFYUI_DIR to an existing ComfyUI tree."
        ) from e
    partial.rename(archive)


def _extract(archive: Path, commit: str, root: Path) -> None:
    top = f"ComfyUI-{commit}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        try:
            with tarfile.open(archive) as tar:
                outside = [m.name for m in tar.getmembers() if m.name.split("/")[0] != top]
                if outside:
                    raise ComfyInstallError(
                        f"{archive} must hold one top folder {top}/; found {outside[0]!r}. "
                        "Delete it and let darkroom download the archive again."
                    )
                _extract_all(tar, tmp, archive)
        except tarfile.TarError as e:
            raise ComfyInstallError(f"{archive} is not a readable tar.gz ({e}); delete it and retry") from e
        if root.exists():
            shutil.rmtree(root)
        Path(tmp, top).rename(root)
    (root / _COMPLETE_MARKER).write_text(commit + "\n")
    log.info("ComfyUI %s extracted to %s", commit, root)


def _extract_all(tar: tarfile.TarFile, dest: str, archive: Path) -> None:
    """``extractall`` with the "data" filter; where Python lacks it (before 3.11.4: Debian bookworm's
    3.11.2), the same refusals by hand: absolute paths, ``..``, links leaving the tree, devices."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        names = [member.name] + ([member.linkname] if member.issym() or member.islnk() else [])
        escapes = any(n.startswith("/") or ".." in n.split("/") for n in names)
        if escapes or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ComfyInstallError(f"{archive}: refusing {member.name!r} (outside the tree or not a file)")
    tar.extractall(dest)  # noqa: S202 (every member checked above)


def _install_requirements(root: Path, data_dir: Path) -> None:
    requirements = (root / "requirements.txt").read_text()
    wanted = "\n".join(line for line in requirements.splitlines() if not _SKIPPED_REQUIREMENTS.match(line))
    constraints = PROJECT_ROOT / "constraints.txt"
    key = hashlib.sha256((wanted + constraints.read_text() + sys.executable).encode()).hexdigest()[:16]
    stamp = data_dir / f".comfyui-requirements-{key}"
    if stamp.exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    filtered = data_dir / "comfyui-requirements.txt"
    filtered.write_text(wanted + "\n")
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints), "-r", str(filtered)]
    log.info("installing ComfyUI's requirements: %s", " ".join(command))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ComfyInstallError(f"installing ComfyUI's requirements failed (pip exit {result.returncode})")
    stamp.write_text(" ".join(command) + "\n")

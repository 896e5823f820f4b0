"""Hugging Face downloads through ``huggingface_hub``, the library every Hugging Face user already trusts.

It reads the endpoint (``DARKROOM_HF_ENDPOINT``, else ``HF_ENDPOINT``: the hub or an HF-compatible
mirror) and the token (``DARKROOM_HF_TOKEN``, else ``HF_TOKEN`` or a ``hf auth login``); it resumes an
interrupted download from its ``.incomplete`` file, and uses ``hf_xet`` (for repositories on Xet
storage) or ``hf_transfer`` (``HF_HUB_ENABLE_HF_TRANSFER=1``) when they are installed, which download
one file in parallel chunks. Progress: the library's bars on a terminal, else a log line every
``PROGRESS_INTERVAL_S`` from a watcher of the growing ``.incomplete`` file.

The hub's own record of a file at a revision (``X-Repo-Commit``, ``X-Linked-Etag``: the LFS sha256,
``X-Linked-Size``) is read first with a HEAD; the caller checks the bytes against it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars

from server.engine.models import FetchError, ModelFile
from server.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 10.0
ATTEMPTS = 4  # whole tries of one file; each resumes from what the previous one left
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MIB = 1 << 20


@dataclass(frozen=True)
class HubFile:
    """What the hub says about one file at one revision."""

    repo: str
    path: str
    revision: str  # as asked (a commit id when pinned)
    commit: str  # X-Repo-Commit: the commit the revision resolved to
    sha256: str | None  # X-Linked-Etag of an LFS file; None for a small git-stored file
    size_bytes: int


def describe(entry: ModelFile, settings: Settings) -> HubFile:
    """HEAD the file at its revision; FetchError naming what to do when the hub refuses."""
    repo, path, revision = entry.source.hf_parts
    revision = revision or "main"
    url = hf_hub_url(repo, path, revision=revision, endpoint=settings.hf_endpoint)
    try:
        with _hub_errors(entry, settings):
            meta = get_hf_file_metadata(url, token=settings.hf_token or None, endpoint=settings.hf_endpoint)
    except _Transient as e:
        raise FetchError(f"{url}: {e} (the hub: DARKROOM_HF_ENDPOINT or HF_ENDPOINT)") from e
    if meta.commit_hash is None or meta.size is None:
        raise FetchError(f"{url}: the answer has no X-Repo-Commit or size: is {settings.hf_endpoint} a hub?")
    etag = (meta.etag or "").lower()
    return HubFile(repo, path, revision, meta.commit_hash, etag if _SHA256.match(etag) else None, meta.size)


def download(entry: ModelFile, hub_file: HubFile, settings: Settings, staging: Path) -> Path:
    """Download into ``staging`` (kept between tries, so a later try resumes); the downloaded file.

    The commit the hub named is what is asked for, so a branch moving meanwhile cannot change the bytes.
    """
    for attempt in range(1, ATTEMPTS + 1):
        watcher = None if sys.stderr.isatty() else _Watcher(entry.file, staging, hub_file.size_bytes)
        try:
            with _hub_errors(entry, settings):
                return Path(
                    hf_hub_download(
                        hub_file.repo,
                        hub_file.path,
                        revision=hub_file.commit,
                        local_dir=staging,
                        endpoint=settings.hf_endpoint,
                        token=settings.hf_token or None,
                    )
                )
        except _Transient as e:
            if attempt == ATTEMPTS:
                raise FetchError(f"{entry.file}: download failed {ATTEMPTS} times, last: {e}") from e
            log.warning("%s: %s; resuming (try %d of %d)", entry.file, e, attempt + 1, ATTEMPTS)
            time.sleep(min(2.0**attempt, 30.0) / 4)
        finally:
            if watcher is not None:
                watcher.stop()
    raise FetchError(f"{entry.file}: no download tries")  # ATTEMPTS >= 1: not reached


@contextlib.contextmanager
def progress_display() -> Iterator[None]:
    """The library's bars on a terminal; elsewhere none (a log would keep every frame of them): the
    watcher's lines instead. For the whole of a fetch, whose files download side by side."""
    if sys.stderr.isatty():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


class _Transient(Exception):
    """A dropped connection or a hub error worth another try (the partial file stays)."""


@contextlib.contextmanager
def _hub_errors(entry: ModelFile, settings: Settings) -> Iterator[None]:
    """huggingface_hub's exceptions as FetchError with what to do, or _Transient for another try."""
    repo, path, revision = entry.source.hf_parts
    where = f"{repo} at {settings.hf_endpoint}"
    try:
        yield
    except GatedRepoError as e:
        raise FetchError(
            f"{entry.file}: {repo} is gated: accept its licence on {where} and set DARKROOM_HF_TOKEN "
            f"to a token with access ({_first_line(e)})"
        ) from e
    except RevisionNotFoundError as e:
        raise FetchError(
            f"{entry.file}: revision {revision or 'main'} is not in {where}: fix the @revision in "
            "model_manifest.yaml (a commit id of that repository)"
        ) from e
    except EntryNotFoundError as e:
        raise FetchError(f"{entry.file}: {path} is not in {where} at {revision or 'main'}") from e
    except RepositoryNotFoundError as e:
        raise FetchError(
            f"{entry.file}: repository {where} not found, or private: set DARKROOM_HF_TOKEN to a token "
            f"with access ({_first_line(e)})"
        ) from e
    except HfHubHTTPError as e:
        if _status(e) in (401, 403):
            raise FetchError(
                f"{entry.file}: {where} refused access ({_first_line(e)}): set DARKROOM_HF_TOKEN"
            ) from e
        if _status(e) >= 500:
            raise _Transient(_first_line(e)) from e
        raise FetchError(f"{entry.file}: {where}: {_first_line(e)}") from e
    except (requests.RequestException, OSError, LocalEntryNotFoundError) as e:
        raise _Transient(_first_line(e)) from e


def _status(error: BaseException) -> int:
    response = getattr(error, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _Watcher:
    """Logs how far the ``.incomplete`` file under ``staging`` has grown, every PROGRESS_INTERVAL_S."""

    def __init__(self, label: str, staging: Path, total_bytes: int) -> None:
        self.label, self.staging, self.total_bytes = label, staging, total_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress {label}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started, first = time.monotonic(), self._size()
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            size = self._size()
            rate = (size - first) / max(time.monotonic() - started, 1e-9) / _MIB
            log.info(
                "%s: %.1f of %.1f MiB (%.0f%%), %.1f MiB/s",
                self.label, size / _MIB, self.total_bytes / _MIB,
                100 * size / max(self.total_bytes, 1), rate,
            )  # fmt: skip

    def _size(self) -> int:
        sizes = [0]
        for path in self.staging.rglob("*.incomplete"):
            with contextlib.suppress(OSError):  # renamed when complete
                sizes.append(path.stat().st_size)
        return max(sizes)

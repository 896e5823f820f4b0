"""Input files named by URL (``image_url`` and friends): data: URIs, https URLs and our own /files/ links.

Remote URLs go through ``netpolicy``: only https (http too if ``inputs_allow_http``), every hop's
address checked (redirects followed by hand, at most 5), at most ``input_max_bytes`` counted while
streaming, all within ``input_timeout_s``. A file is written as ``.part`` and renamed when complete,
so a partial download is never visible under its final name. The content type is sniffed from the
first bytes; the declared one is used only when the bytes are not recognised.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import secrets
import shutil
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from server.errors import InputError, NotFoundError
from server.media.objects import ObjectStore
from server.media.outputs import OutputStore, content_type_of, output_key
from server.media.uploads import UploadStore, safe_name, upload_key
from server.security import netpolicy, untrusted
from server.settings import Settings

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 1 << 16
_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.S)
_UPLOAD_PATH = re.compile(r"^/files/uploads/(?P<id>[^/]+)/(?P<name>[^/]+)$")
_OUTPUT_PATH = re.compile(r"^/files/(?P<id>[^/]+)/(?P<name>[^/]+)$")

# (offset, magic bytes, content type); ISO-BMFF brands are handled in sniff().
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\xff\xfb", "audio/mpeg"),  # an MPEG-1 layer III frame (an mp3 without an ID3 tag)
    (0, b"\xff\xf3", "audio/mpeg"),
    (0, b"\xff\xf2", "audio/mpeg"),
    (0, b"\xff\xf1", "audio/aac"),  # ADTS (raw AAC)
    (0, b"\xff\xf9", "audio/aac"),
    (0, b"fLaC", "audio/flac"),
    (0, b"OggS", "audio/ogg"),
)
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_BRANDS = {b"avif": "image/avif", b"avis": "image/avif", b"heic": "image/heic", b"qt  ": "video/quicktime"}


@dataclass(frozen=True)
class InputFile:
    """A fetched input, complete on disk."""

    path: Path
    content_type: str
    size_bytes: int


def sniff(head: bytes) -> str | None:
    """The content type the first bytes of a file show, or None if not recognised."""
    for offset, magic, content_type in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return content_type
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        return _BRANDS.get(head[8:12], "video/mp4")
    return None


@contextlib.contextmanager
def input_area(settings: Settings, request_id: str) -> Iterator[Path]:
    """A folder for one request's inputs under ``<data_dir>/inputs``, removed on exit."""
    path = settings.inputs_path / f"{request_id}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def fetch_input(
    url: str,
    *,
    settings: Settings,
    session: aiohttp.ClientSession,
    dest_dir: Path | None = None,
    own_base_url: str | None = None,
    objects: ObjectStore | None = None,
    accept: Sequence[str] = (),
    max_bytes: int | None = None,
    timeout_s: float | None = None,
) -> InputFile:
    """Fetch ``url`` into ``dest_dir`` (default: a new folder under ``<data_dir>/inputs``).

    ``session`` must come from ``netpolicy.guarded_session``. Links to this server's own files
    (``own_base_url`` or ``files_url`` + ``/files/...``) are read from disk, or from ``objects`` (the
    shared store) when given. ``accept`` lists content-type prefixes ("image/"); anything else is a 422.
    ``max_bytes`` and ``timeout_s`` override ``input_max_bytes`` and ``input_timeout_s`` for callers with
    their own limits (LoRA files).
    """
    netpolicy.require_guarded(session)
    limit = settings.input_max_bytes if max_bytes is None else max_bytes
    timeout_s = settings.input_timeout_s if timeout_s is None else timeout_s
    if dest_dir is None:
        dest_dir = settings.inputs_path / secrets.token_hex(8)
    dest_dir.mkdir(parents=True, exist_ok=True)
    own = next(
        (b for b in (own_base_url, settings.files_url) if b and url.startswith(b.rstrip("/") + "/files/")),
        None,
    )
    if url.startswith("data:"):
        found = await asyncio.to_thread(_save_data_uri, url, dest_dir, limit)
    elif own and objects is not None:
        found = await _copy_object(url, own, objects, dest_dir, limit)
    elif own:
        found = await asyncio.to_thread(_copy_local, url, own, settings, dest_dir, limit)
    else:
        try:
            async with asyncio.timeout(timeout_s):
                found = await _download(url, session, settings, dest_dir, limit)
        except TimeoutError as e:
            raise InputError(f"Fetching {_short(url)} took longer than {timeout_s:g} s") from e
    if accept and not any(found.content_type.startswith(prefix) for prefix in accept):
        found.path.unlink(missing_ok=True)
        raise InputError(f"{_short(url)} is {found.content_type}; expected {' or '.join(accept)}")
    return found


def _short(url: str) -> str:
    return url if len(url) <= 100 else url[:97] + "..."


def _too_large(url: str, size: int, limit: int) -> InputError:
    return InputError(
        f"{_short(url)} is too large: {size} bytes or more, the limit is {limit} bytes",
        code="input_too_large",
    )


def _finish(partial: Path, dest_dir: Path, hint: str, declared: str, size: int) -> InputFile:
    with partial.open("rb") as f:
        head = f.read(32)
    declared = declared.split(";")[0].strip().lower()
    if not declared or declared == "application/octet-stream":
        declared = content_type_of(hint)
    content_type = sniff(head) or declared
    path = dest_dir / f"{secrets.token_hex(4)}-{safe_name(hint, content_type)}"
    partial.rename(path)
    return InputFile(path, content_type, size)


def _save_data_uri(url: str, dest_dir: Path, limit: int) -> InputFile:
    match = _DATA_URI.match(url[:1024])
    if match is None:
        raise InputError(f"Malformed data URI (expected data:<type>[;base64],<data>): {_short(url)}")
    payload = url[match.end() :]
    is_base64 = ";base64" in match["params"].lower()
    estimate = len(payload) * 3 // 4 if is_base64 else len(payload) // 3
    if estimate > limit:
        raise _too_large("the data URI", estimate, limit)
    try:
        data = (
            base64.b64decode(payload, validate=True) if is_base64 else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError) as e:
        raise InputError(f"data URI payload is not valid base64: {e}") from e
    if len(data) > limit:
        raise _too_large("the data URI", len(data), limit)
    partial = dest_dir / f".{secrets.token_hex(8)}.part"
    partial.write_bytes(data)
    return _finish(partial, dest_dir, "input", match["type"], len(data))


def _own_path(url: str, own_base_url: str) -> str:
    path = urllib.parse.unquote(URL(url).path)
    base_path = URL(own_base_url).path.rstrip("/")
    return path[len(base_path) :] if base_path and path.startswith(base_path) else path


async def _copy_object(
    url: str, own_base_url: str, objects: ObjectStore, dest_dir: Path, limit: int
) -> InputFile:
    path = _own_path(url, own_base_url)
    try:
        if upload := _UPLOAD_PATH.match(path):
            key = upload_key(upload["id"], upload["name"])
        elif output := _OUTPUT_PATH.match(path):
            key = output_key(output["id"], output["name"])
        else:
            raise NotFoundError(path)
        info = await objects.head(key)
        if info is None:
            raise NotFoundError(path)
    except NotFoundError as e:
        raise InputError(f"{_short(url)} names no file on this server", status=404, code="not_found") from e
    if info.size_bytes > limit:
        raise _too_large(url, info.size_bytes, limit)
    partial = dest_dir / f".{secrets.token_hex(8)}.part"
    try:
        size = await objects.download(key, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    name = key.rsplit("/", 1)[-1]
    return _finish(partial, dest_dir, name, content_type_of(name), size)


def _copy_local(url: str, own_base_url: str, settings: Settings, dest_dir: Path, limit: int) -> InputFile:
    path = _own_path(url, own_base_url)
    try:
        if upload := _UPLOAD_PATH.match(path):
            source = UploadStore(settings.uploads_path, 0).path_of(upload["id"], upload["name"])
        elif output := _OUTPUT_PATH.match(path):
            source = OutputStore(settings.outputs_path).path_of(output["id"], output["name"])
        else:
            raise NotFoundError(path)
    except NotFoundError as e:
        raise InputError(f"{_short(url)} names no file on this server", status=404, code="not_found") from e
    size = source.stat().st_size
    if size > limit:
        raise _too_large(url, size, limit)
    partial = dest_dir / f".{secrets.token_hex(8)}.part"
    shutil.copyfile(source, partial)
    return _finish(partial, dest_dir, source.name, content_type_of(source.name), size)


async def _download(
    url: str, session: aiohttp.ClientSession, settings: Settings, dest_dir: Path, limit: int
) -> InputFile:
    policy = netpolicy.AddressPolicy.from_settings(settings)
    schemes = ("https", "http") if settings.inputs_allow_http else ("https",)
    current = _parsed(url, url)
    for _ in range(MAX_REDIRECTS + 1):
        netpolicy.check_url(current, policy, schemes=schemes)
        try:
            async with session.get(current, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise InputError(f"{_short(url)}: HTTP {response.status} redirect without a Location")
                    current = _parsed(url, location, base=current)
                    continue
                if response.status != 200:
                    raise InputError(
                        f"Fetching {_short(url)} failed: HTTP {response.status} {response.reason}"
                    )
                return await _stream(response, url, limit, dest_dir)
        except aiohttp.ClientConnectorDNSError as e:  # a refused address raises BlockedAddressError itself
            raise InputError(f"Cannot resolve the host of {_short(url)}: {e.os_error}") from e
        except aiohttp.ClientError as e:
            raise InputError(f"Fetching {_short(url)} failed: {e}") from e
    raise InputError(f"{_short(url)} redirected more than {MAX_REDIRECTS} times")


def _parsed(url: str, text: str, *, base: URL | None = None) -> URL:
    """``text`` (the URL itself, or a redirect's Location relative to ``base``) through the one parser."""
    try:
        return untrusted.parse_url(text, base=base)
    except untrusted.UrlError as e:
        what = f"{_short(url)} redirected to a Location that" if base is not None else _short(url)
        raise InputError(f"{what} cannot be fetched: {e}") from e


async def _stream(response: aiohttp.ClientResponse, url: str, limit: int, dest_dir: Path) -> InputFile:
    if response.content_length is not None and response.content_length > limit:
        raise _too_large(url, response.content_length, limit)
    partial = dest_dir / f".{secrets.token_hex(8)}.part"
    size = 0
    try:
        with partial.open("wb") as out:
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise _too_large(url, size, limit)
                out.write(chunk)
        hint = Path(response.url.path).name or "input"
        return _finish(partial, dest_dir, hint, response.headers.get("Content-Type", ""), size)
    finally:
        partial.unlink(missing_ok=True)

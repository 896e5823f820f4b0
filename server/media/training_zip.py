"""A LoRA trainer's image archive (fal's ``image_data_url``/``images_data_url``), checked and unpacked
before any worker sees it.

The archive is untrusted: everything is decided from its central directory first (how many entries,
their declared sizes and compression ratios, their names), then each entry is decompressed with a
byte counter that does not trust the declared size, and every image is decoded in full. Entry names
never become paths: the images are written under names of our own (``0000.png``, ``0000.txt``), so a
name with ``..`` cannot escape, but it is still refused (422) because such an archive is not a data
set made in good faith. Anything wrong is an ``InputError`` (422) naming the entry and the limit.

What is usable: images (PNG, JPEG, WebP, BMP, GIF's first frame, TIFF) and, beside an image, a
``.txt`` caption with the same name (``cat.jpg`` + ``cat.txt``). macOS's ``__MACOSX/`` folder and
hidden files (``.DS_Store``) are skipped; any other file is refused. EXIF orientation is applied, so a
phone photo trains the way it is seen; every image is stored as RGB PNG.
"""

from __future__ import annotations

import io
import logging
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import PIL.Image
import PIL.ImageOps

from server.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTION_SUFFIX = ".txt"
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class ZipLimits:
    """What one training archive may hold."""

    max_entries: int = 1000
    max_images: int = 500
    max_entry_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_caption_bytes: int = 16 * 1024
    # A compression ratio above this, on an entry larger than ratio_floor_bytes, is a bomb: real
    # images hardly compress (PNG and JPEG are compressed already); a caption is small.
    max_ratio: int = 100
    ratio_floor_bytes: int = 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class TrainingImage:
    """One image of the set as unpacked: its file, its caption ("" when none) and where it came from."""

    path: Path
    caption: str
    source: str
    width: int
    height: int


def unpack(archive: Path, dest: Path, limits: ZipLimits = ZipLimits()) -> list[TrainingImage]:
    """Check ``archive`` and write its images (RGB PNG, EXIF orientation applied) and captions into
    ``dest``, in the archive's name order; InputError (422) saying what is wrong otherwise."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"image_data_url: not a zip archive ({e}); send a .zip of images") from e
    with zf:
        images, captions = _sort_entries(zf.infolist(), limits)
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for index, (stem, info) in enumerate(sorted(images.items())):
            path = dest / f"{index:04d}.png"
            width, height = _write_image(_read(zf, info, limits.max_entry_bytes), info.filename, path, limits)
            caption = _caption(zf, captions.get(stem), limits)
            path.with_suffix(CAPTION_SUFFIX).write_text(caption, encoding="utf-8")
            out.append(TrainingImage(path, caption, info.filename, width, height))
    return out


def _sort_entries(
    infos: list[zipfile.ZipInfo], limits: ZipLimits
) -> tuple[dict[str, zipfile.ZipInfo], dict[str, zipfile.ZipInfo]]:
    """The archive's images and captions by stem (their path without suffix), every entry checked
    from the central directory before anything is decompressed."""
    if len(infos) > limits.max_entries:
        raise InputError(
            f"image_data_url: the archive has {len(infos)} entries; at most {limits.max_entries} are "
            f"allowed (at most {limits.max_images} images, each with an optional .txt caption)"
        )
    total = 0
    images: dict[str, zipfile.ZipInfo] = {}
    captions: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = _checked_name(info)
        if name is None:
            continue
        _check_size(info, limits)
        if name.suffix.lower() == CAPTION_SUFFIX and info.file_size > limits.max_caption_bytes:
            raise InputError(
                f"image_data_url: caption {info.filename!r} is {info.file_size} bytes; at most "
                f"{limits.max_caption_bytes}"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise InputError(
                f"image_data_url: the archive unpacks to more than {limits.max_total_bytes} bytes "
                f"(at {info.filename!r}); send fewer or smaller images"
            )
        suffix, stem = name.suffix.lower(), str(name.with_suffix("")).lower()
        kind = captions if suffix == CAPTION_SUFFIX else images if suffix in IMAGE_SUFFIXES else None
        if kind is None:
            raise InputError(
                f"image_data_url: {info.filename!r} is neither an image nor a caption; the archive may "
                f"hold images ({', '.join(sorted(IMAGE_SUFFIXES))}) and same-named .txt captions"
            )
        if stem in kind:
            raise InputError(
                f"image_data_url: {info.filename!r} and {kind[stem].filename!r} have the same name; "
                "each image needs its own name for its caption to be found"
            )
        kind[stem] = info
    _check_counts(images, captions, limits)
    return images, captions


def _checked_name(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's path, or None for one skipped (folders, macOS metadata, hidden files)."""
    raw = info.filename
    name = PurePosixPath(raw)
    if raw.startswith("/") or "\\" in raw or ".." in name.parts or (raw[1:2] == ":"):
        raise InputError(
            f"image_data_url: entry {raw!r} points outside the archive (an absolute path, a drive or "
            "'..'); entries must be relative paths inside it"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"image_data_url: entry {raw!r} is a symbolic link; send the files themselves")
    if info.is_dir() or name.parts[:1] == ("__MACOSX",) or any(p.startswith(".") for p in name.parts):
        return None
    if info.flag_bits & 0x1:
        raise InputError(f"image_data_url: entry {raw!r} is encrypted; send an archive without a password")
    return name


def _check_size(info: zipfile.ZipInfo, limits: ZipLimits) -> None:
    if info.file_size > limits.max_entry_bytes:
        raise InputError(
            f"image_data_url: {info.filename!r} unpacks to {info.file_size} bytes; at most "
            f"{limits.max_entry_bytes} per file"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise InputError(
            f"image_data_url: {info.filename!r} is a zip bomb: {info.compress_size} bytes unpack to "
            f"{info.file_size} (x{ratio:.0f}; at most x{limits.max_ratio})"
        )


def _check_counts(
    images: dict[str, zipfile.ZipInfo], captions: dict[str, zipfile.ZipInfo], limits: ZipLimits
) -> None:
    if not images:
        raise InputError(
            "image_data_url: the archive holds no images; it needs at least one "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), each with an optional same-named .txt caption"
        )
    if len(images) > limits.max_images:
        raise InputError(
            f"image_data_url: the archive holds {len(images)} images; at most {limits.max_images}"
        )
    orphans = sorted(captions[stem].filename for stem in captions.keys() - images.keys())
    if orphans:
        raise InputError(
            f"image_data_url: caption {orphans[0]!r} has no image of the same name beside it "
            f"({len(orphans)} such captions); name each caption after its image (cat.jpg, cat.txt)"
        )


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """The entry's bytes, counted while decompressing: a header that understates the size is caught."""
    buf = io.BytesIO()
    try:
        with zf.open(info) as f:
            while chunk := f.read(_CHUNK_BYTES):
                if buf.tell() + len(chunk) > max_bytes:
                    raise InputError(
                        f"image_data_url: {info.filename!r} unpacks to more than {max_bytes} bytes "
                        "(more than its header says: a zip bomb)"
                    )
                buf.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise InputError(f"image_data_url: {info.filename!r} cannot be unpacked ({e})") from e
    return buf.getvalue()


def _write_image(data: bytes, source: str, path: Path, limits: ZipLimits) -> tuple[int, int]:
    """Decode the whole image (size checked from its header first), apply its EXIF orientation and
    save it as RGB PNG; its width and height as saved."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limits.max_pixels:
                raise InputError(
                    f"image_data_url: {source!r} is {image.width} x {image.height} pixels; at most "
                    f"{limits.max_pixels} pixels per image"
                )
            image.load()
            upright = PIL.ImageOps.exif_transpose(image).convert("RGB")
    except PIL.Image.DecompressionBombError as e:
        raise InputError(f"image_data_url: {source!r} has too many pixels ({e})") from e
    except PIL.UnidentifiedImageError as e:
        raise InputError(
            f"image_data_url: {source!r} is not an image (its name says so, its bytes do not)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow's decoders raise for cut or corrupt data
        raise InputError(f"image_data_url: {source!r} is not a complete image: decoding failed ({e})") from e
    upright.save(path, format="PNG")
    return upright.width, upright.height


def _caption(zf: zipfile.ZipFile, info: zipfile.ZipInfo | None, limits: ZipLimits) -> str:
    if info is None:
        return ""
    data = _read(zf, info, limits.max_caption_bytes)
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"image_data_url: caption {info.filename!r} is not UTF-8 text ({e})") from e

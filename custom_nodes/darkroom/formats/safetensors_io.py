"""The safetensors file layer (no ComfyUI): header parsing with damage checks, a memory map that hands out
zero-copy tensor views and drops used pages from RSS, and a deterministic writer.

Why drop pages: mapped file pages count towards the process's RSS while mapped, so a 20 GB bf16 file
served as 10 GB of fp8 would peak near 30 GB. MADV_DONTNEED after each 32 MB chunk keeps the peak near
the loaded size; the pages stay in the page cache, so a second pass over a chunk maps them again cheaply.

Why read ahead: from a cold page cache, a streaming load would otherwise alternate between waiting on
the disk and converting. A background thread keeps the disk busy a window ahead of the consumer, into
the page cache (which is not RSS), so disk reads overlap conversion.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import safetensors.torch
import torch

from .arch import ModelFileError, Shape

_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
    "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER_BYTES = 100 << 20
RELEASE_CHUNK_BYTES = 32 << 20  # mapped bytes processed before their pages are dropped from RSS
# Read-ahead goes in blocks, each skipped if already cached, advised in pieces: one WILLNEED call reads at
# most max(read_ahead_kb, max_sectors_kb) of the device (as little as 128 KB), whatever length it names.
READAHEAD_BLOCK_BYTES = 2 << 20
READAHEAD_ADVICE_BYTES = 128 << 10
# How far past the module being converted a streaming load reads ahead: enough to keep the disk busy
# while a module converts; the page cache holds it, not the process.
READAHEAD_WINDOW_BYTES = 256 << 20


class CheckpointFormatError(ModelFileError):
    """Not a readable safetensors file, or a storage format this loader cannot serve."""

    code = "checkpoint_format"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in the file."""

    dtype: torch.dtype
    shape: Shape
    offset: int  # absolute byte offset in the file
    nbytes: int

    def chunks(self) -> list[tuple[int, int]]:
        """(first element, element count) runs of about RELEASE_CHUNK_BYTES each."""
        step, numel = max(1, RELEASE_CHUNK_BYTES // self.dtype.itemsize), math.prod(self.shape)
        return [(i, min(step, numel - i)) for i in range(0, numel, step)]


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def _entry(path: Path, name: str, info: Mapping[str, object], data_start: int, size: int) -> TensorEntry:
    dtype = _DTYPES.get(str(info.get("dtype")))
    if dtype is None:
        raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape = tuple(int(d) for d in info["shape"])  # type: ignore[attr-defined]
    begin, end = (int(x) for x in info["data_offsets"])  # type: ignore[attr-defined]
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} size disagrees with its shape; the file is corrupt"
        )
    if data_start + end > size:
        raise CheckpointFormatError(
            f"{path}: file is truncated ({size} bytes, tensor {name!r} ends at {data_start + end}); "
            f"re-download it"
        )
    return TensorEntry(dtype, shape, data_start + begin, end - begin)


def read_header(path: Path) -> Header:
    """Parse a safetensors header without reading tensor data; CheckpointFormatError if damaged."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < length <= min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointFormatError(f"{path}: not a safetensors file (bad header length); re-download it")
        try:
            doc = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointFormatError(
                f"{path}: safetensors header is not valid JSON; re-download it"
            ) from e
    metadata = doc.pop("__metadata__", None) or {}
    tensors = {k: _entry(path, k, v, 8 + length, size) for k, v in doc.items()}
    return Header(path, tensors, {str(k): str(v) for k, v in metadata.items()})


class Readahead:
    """A daemon thread asking the kernel (POSIX_FADV_WILLNEED) to read a pending byte range of a file into
    the page cache ahead of use. The advice only queues the reads, but queueing costs page allocation and
    can block on a full device queue, so it runs here rather than on the converting thread."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._probe = bytearray(1)
        self._cond = threading.Condition()
        self._next = self._end = 0  # [next, end): bytes still to advise
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="darkroom-readahead", daemon=True)
        self._thread.start()

    def request(self, start: int, end: int) -> None:
        """Have [start, end) read ahead (the consumer is at `start`); a range past the pending one
        replaces it."""
        with self._cond:
            if start <= self._end:  # continues the pending range; skip what the consumer has passed
                self._next, self._end = max(self._next, start), max(self._end, end)
            else:
                self._next, self._end = start, end
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._next >= self._end:
                    self._cond.wait()
                if self._closed:
                    return
                start = self._next
                self._next = end = min(start + READAHEAD_BLOCK_BYTES, self._end)
            if self._cached(start) and self._cached(end - 1):
                continue  # advising cached pages still walks them, a real cost on a warm load
            for offset in range(start, end, READAHEAD_ADVICE_BYTES):
                with contextlib.suppress(OSError):  # advice only: a failure costs speed, never data
                    os.posix_fadvise(
                        self._fd, offset, min(READAHEAD_ADVICE_BYTES, end - offset), os.POSIX_FADV_WILLNEED
                    )

    def _cached(self, offset: int) -> bool:
        """Whether the page holding `offset` is in the page cache: a non-blocking 1-byte read (a miss may
        start a small read, which the advice that follows covers anyway)."""
        if not hasattr(os, "RWF_NOWAIT"):
            return False
        try:
            return os.preadv(self._fd, [self._probe], offset, os.RWF_NOWAIT) == 1
        except OSError:  # EAGAIN: not cached (or RWF_NOWAIT unsupported here)
            return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)


class MappedFile:
    """A safetensors file mapped privately (never written, so views cost no copy) for tensor views."""

    def __init__(self, header: Header) -> None:
        self.header = header
        with header.path.open("rb") as f:
            self._map: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self._readahead: Readahead | None = None

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._readahead is not None:
            self._readahead.close()
            self._readahead = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a tensor still views the map: unmapped when it goes
                self._map.close()
            self._map = None

    def prefetch(self, start: int, end: int) -> None:
        """Read file bytes [start, end) into the page cache in the background (streaming loads)."""
        if self._map is None or not hasattr(os, "posix_fadvise"):  # Windows and macOS have no fadvise
            return
        if self._readahead is None:
            self._readahead = Readahead(self.header.path)
        self._readahead.request(start, min(end, len(self._map)))

    def view(self, key: str) -> torch.Tensor:
        """Zero-copy tensor view (valid while the file is open; pages count in RSS until released)."""
        entry = self.header.tensors[key]
        if self._map is None:
            raise ValueError(f"{self.header.path}: file is closed")
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        self._map.madvise(mmap.MADV_WILLNEED, *_pages(entry.offset, entry.nbytes))
        raw = torch.frombuffer(self._map, dtype=torch.uint8, count=entry.nbytes, offset=entry.offset)
        if entry.offset % entry.dtype.itemsize:  # unaligned (old writers): views need aligned storage
            raw = raw.clone()
        return raw.view(entry.dtype).reshape(entry.shape)

    def release(self, key: str, start: int = 0, count: int | None = None) -> None:
        """Drop the pages of elements [start, start + count) of a tensor from RSS (page cache keeps them)."""
        entry = self.header.tensors[key]
        count = math.prod(entry.shape) - start if count is None else count
        if self._map is not None and count > 0:
            size = entry.dtype.itemsize
            self._map.madvise(mmap.MADV_DONTNEED, *_pages(entry.offset + start * size, count * size))

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """An owned copy (converted to `dtype` on the way), copied and released chunk by chunk."""
        entry = self.header.tensors[key]
        src = self.view(key).reshape(-1)
        out = torch.empty(src.shape, dtype=dtype or entry.dtype)
        for start, n in entry.chunks():
            out[start : start + n].copy_(src[start : start + n])
            self.release(key, start, n)
        return out.reshape(entry.shape)


def _pages(offset: int, nbytes: int) -> tuple[int, int]:
    start = offset - offset % mmap.PAGESIZE
    return start, offset + nbytes - start


def save_state_dict(
    path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file (contiguous tensors; byte-identical for identical input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    safetensors.torch.save_file(tensors, str(path), metadata=dict(metadata) if metadata else None)

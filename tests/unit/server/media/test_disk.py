"""The disk budget: the quota over outputs and uploads, the free-space floor, a full disk mid-write, and
bytes coming back as files are deleted or expire."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.errors import InputError
from server.media.disk import DiskBudget, StorageFullError
from server.media.outputs import OutputStore
from server.media.uploads import UploadStore


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_the_count_starts_from_what_is_on_disk(tmp_path: Path) -> None:
    (tmp_path / "outputs" / "r1").mkdir(parents=True)
    (tmp_path / "outputs" / "r1" / "0.png").write_bytes(b"x" * 300)
    (tmp_path / "uploads" / "u1").mkdir(parents=True)
    (tmp_path / "uploads" / "u1" / "a.bin").write_bytes(b"y" * 200)
    budget = DiskBudget((tmp_path / "outputs", tmp_path / "uploads", tmp_path / "missing"))
    assert budget.used_bytes == 500


def test_quota_refuses_what_does_not_fit_and_says_why(tmp_path: Path) -> None:
    budget = DiskBudget((tmp_path,), quota_bytes=1000)
    budget.take(700, "first")
    with pytest.raises(StorageFullError) as full:
        budget.take(400, "upload u/x.bin")
    assert full.value.status == 507 and full.value.code == "storage_full"
    assert "upload u/x.bin" in full.value.message and "700 of 1000" in full.value.message
    assert full.value.headers["Retry-After"]
    with pytest.raises(InputError) as never:
        budget.check(1001, "upload u/huge.bin")
    assert never.value.status == 413 and "whole storage quota of 1000" in never.value.message
    assert budget.used_bytes == 700, "a refused take counts nothing"
    budget.give_back(700)
    budget.take(1000, "now it fits")


def test_free_space_floor(tmp_path: Path) -> None:
    budget = DiskBudget((tmp_path / "not-yet",), min_free_bytes=1 << 60)  # more than any disk
    with pytest.raises(StorageFullError, match="DARKROOM_DISK_MIN_FREE_BYTES"):
        budget.take(1, "output 0.png")
    assert DiskBudget((tmp_path,), min_free_bytes=1).free_bytes() > 0


def test_a_full_disk_mid_write_fails_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    budget = DiskBudget((tmp_path,))
    store = OutputStore(tmp_path, budget)
    store.save("req-1", "0.png", b"a" * 10, "image/png")
    (tmp_path / "req-1" / "1.png.part").symlink_to("/dev/full")  # the kernel answers ENOSPC to writes
    with pytest.raises(StorageFullError, match="output 1.png of request req-1: the disk is full"):
        store.save("req-1", "1.png", b"b" * 10, "image/png")
    assert _files(tmp_path) == ["req-1/0.png"] and budget.used_bytes == 10


def test_outputs_count_against_the_quota_and_give_it_back(tmp_path: Path) -> None:
    budget = DiskBudget((tmp_path,), quota_bytes=25)
    store = OutputStore(tmp_path, budget)
    store.save("req-1", "0.png", b"a" * 10, "image/png")
    store.save("req-1", "0.png", b"a" * 12, "image/png")  # written again (a retried run): counted once
    assert budget.used_bytes == 12
    with pytest.raises(StorageFullError):
        store.save("req-2", "0.png", b"b" * 14, "image/png")
    assert _files(tmp_path) == ["req-1/0.png"]
    store.delete(["req-1"])
    assert budget.used_bytes == 0
    store.save("req-2", "0.png", b"b" * 14, "image/png")
    then = time.time() - 7200
    os.utime(tmp_path / "req-2", (then, then))
    assert store.expire(older_than_s=3600) == 1 and budget.used_bytes == 0


async def test_uploads_count_per_chunk_and_expire(tmp_path: Path) -> None:
    budget = DiskBudget((tmp_path,), quota_bytes=1000)
    store = UploadStore(tmp_path, 10_000, budget)

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"z" * 300

    first, name = store.begin("a.bin", "application/octet-stream")
    assert await store.receive(first, name, chunks(2)) == 600
    second, name2 = store.begin("b.bin", "application/octet-stream")
    with pytest.raises(StorageFullError):
        await store.receive(second, name2, chunks(2))
    assert budget.used_bytes == 600 and _files(tmp_path) == [f"{first}/a.bin"]
    then = time.time() - 7200
    os.utime(tmp_path / first, (then, then))
    assert store.expire(older_than_s=3600) == 1 and budget.used_bytes == 0 and _files(tmp_path) == []

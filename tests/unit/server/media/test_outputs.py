"""The output store: saving, names that cannot escape it, deleting and expiring request folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.errors import NotFoundError
from server.media.outputs import OutputStore


def _age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(folder, (then, then))


def test_save_is_atomic_and_names_cannot_escape(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "outputs")
    saved = store.save("req-1", "0.png", b"png", "image/png")
    assert saved.route == "/files/req-1/0.png" and store.path_of("req-1", "0.png").read_bytes() == b"png"
    assert not list((tmp_path / "outputs" / "req-1").glob("*.part"))
    for request_id, name in (("..", "0.png"), ("req-1", "../x"), ("req-1", "0.png.part"), ("req-1", "1.png")):
        with pytest.raises(NotFoundError):
            store.path_of(request_id, name)


def test_expire_deletes_old_folders_except_kept_ones(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "outputs")
    for request_id in ("old-sync", "old-job", "recent"):
        store.save(request_id, "0.png", b"png", "image/png")
    _age(tmp_path / "outputs" / "old-sync", 7200)
    _age(tmp_path / "outputs" / "old-job", 7200)
    (tmp_path / "outputs" / "stray.txt").write_text("not a request folder")

    assert store.expire(older_than_s=3600, keep={"old-job"}) == 1
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["old-job", "recent", "stray.txt"]
    store.delete(["old-job", "never-existed", ".."])
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["recent", "stray.txt"]
    assert OutputStore(tmp_path / "absent").expire(older_than_s=0) == 0

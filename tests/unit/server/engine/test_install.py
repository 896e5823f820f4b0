"""The ComfyUI installer: existing tree, cached archive, and the offline error."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import pytest

from server.engine import install
from server.engine.install import ComfyInstallError, ensure_comfyui
from server.settings import load_settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _archive(path: Path, top: str, files: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def settings(tmp_path):
    return load_settings(
        {}, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), comfyui_commit=COMMIT
    )


def test_installs_from_the_cached_archive(settings):
    _archive(
        install.archive_path(settings),
        f"ComfyUI-{COMMIT}",
        {"main.py": "", "comfyui_version.py": '__version__ = "0.8.0"\n', "requirements.txt": "torch\n"},
    )
    root = ensure_comfyui(settings, install_requirements=False)
    assert root == settings.managed_comfyui_path
    assert (root / "main.py").exists() and install.comfyui_version(root) == "0.8.0"
    # Idempotent: a second call finds the finished tree and does not re-extract.
    (root / "marker").write_text("kept")
    assert ensure_comfyui(settings, install_requirements=False) == root
    assert (root / "marker").read_text() == "kept"


def test_archive_with_a_foreign_top_folder_is_refused(settings):
    _archive(install.archive_path(settings), "evil", {"main.py": ""})
    with pytest.raises(ComfyInstallError, match="one top folder"):
        ensure_comfyui(settings, install_requirements=False)
    assert not settings.managed_comfyui_path.exists()


def test_offline_without_archive_says_where_to_put_it(settings, monkeypatch):
    monkeypatch.setattr(install, "ARCHIVE_URL", "http://127.0.0.1:9/{commit}.tar.gz")
    with pytest.raises(ComfyInstallError) as caught:
        ensure_comfyui(settings, install_requirements=False)
    assert str(install.archive_path(settings)) in str(caught.value)
    assert "DARKROOM_COMFYUI_DIR" in str(caught.value)
    assert not list(settings.cache_path.glob("*.part"))


def test_existing_install_is_used_and_a_version_mismatch_warned(tmp_path, caplog):
    tree = tmp_path / "ComfyUI"
    tree.mkdir()
    (tree / "main.py").write_text("")
    (tree / "comfyui_version.py").write_text('__version__ = "0.7.1"\n')
    settings = load_settings({}, comfyui_dir=str(tree), data_dir=str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING):
        assert ensure_comfyui(settings, install_requirements=False) == tree
    assert "0.7.1" in caplog.text and "0.8.0" in caplog.text


def test_existing_dir_that_is_not_comfyui_is_refused(tmp_path):
    settings = load_settings({}, comfyui_dir=str(tmp_path), data_dir=str(tmp_path / "data"))
    with pytest.raises(ComfyInstallError, match="no main.py"):
        ensure_comfyui(settings, install_requirements=False)


@pytest.mark.parametrize("has_data_filter", [True, False])
def test_a_path_leaving_the_tree_is_refused_with_or_without_the_data_filter(
    settings, monkeypatch, has_data_filter
):
    """Pythons before 3.11.4 (Debian bookworm's 3.11.2, the image's base there) have no "data" filter:
    the same refusals are made by hand, and a good archive still extracts."""
    if not has_data_filter:
        monkeypatch.delattr(install.tarfile, "data_filter")
    top = f"ComfyUI-{COMMIT}"
    _archive(install.archive_path(settings), top, {"main.py": "", "../../escaped.py": ""})
    with pytest.raises(ComfyInstallError):
        ensure_comfyui(settings, install_requirements=False)
    assert not settings.managed_comfyui_path.exists()
    assert not (settings.managed_comfyui_path.parent.parent / "escaped.py").exists()

    _archive(install.archive_path(settings), top, {"main.py": "", "comfy/model.py": "x = 1\n"})
    root = ensure_comfyui(settings, install_requirements=False)
    assert (root / "comfy/model.py").read_text() == "x = 1\n"

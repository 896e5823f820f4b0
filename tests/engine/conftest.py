"""Engine tests run ComfyUI in-process: its tree and our node pack go on sys.path (CPU unless a GPU is
visible), and `models_dir` builds every tiny model once per session with the `darkroom.tiny` builders."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings import PROJECT_ROOT, load_settings


def comfyui_root() -> Path:
    """DARKROOM_COMFYUI_DIR, else the pinned tree under <repo>/data/comfyui."""
    settings = load_settings()
    if settings.comfyui_dir:
        return Path(settings.comfyui_dir)
    return PROJECT_ROOT / "data" / "comfyui" / f"ComfyUI-{settings.comfyui_commit}"


def pytest_configure(config: pytest.Config) -> None:
    root = comfyui_root()
    if not (root / "comfy" / "sd.py").is_file():
        raise pytest.UsageError(
            f"engine tests need a ComfyUI tree at {root} and found none: run `make setup`, "
            f"or set DARKROOM_COMFYUI_DIR to a ComfyUI checkout"
        )
    for path in (str(root), str(PROJECT_ROOT / "custom_nodes")):
        if path not in sys.path:
            sys.path.insert(0, path)
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args
        import torch

        comfy.cli_args.args.cpu = not torch.cuda.is_available()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every tiny model (all `darkroom.tiny.<module>.build`), registered as ComfyUI model folders."""
    import darkroom.tiny
    import folder_paths

    directory = tmp_path_factory.mktemp("models")
    for info in pkgutil.iter_modules(darkroom.tiny.__path__):
        module = importlib.import_module(f"darkroom.tiny.{info.name}")
        if callable(getattr(module, "build", None)):
            module.build(directory)
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        folder_paths.add_model_folder_path(folder.name, str(folder), is_default=True)
    yield directory

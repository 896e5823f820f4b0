"""What a client may see of an error message: model files by name, files relative to darkroom's folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import public_message, relative_paths
from server.settings import load_settings


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("/srv/data/models/vae/a.safetensors: 16 latent channels", "a.safetensors: 16 latent channels"),
        (
            "cannot blend /m/b/one.sft and '/m/c/two.ckpt': shape",
            "cannot blend one.sft and 'two.ckpt': shape",
        ),
        ("LoRA /cache/loras/ab/cd.safetensors matches no key", "LoRA cd.safetensors matches no key"),
        # URLs, relative paths and other files are left as they are.
        ("from https://host/x/y.safetensors", "from https://host/x/y.safetensors"),
        ("./rel/x.pt and /etc/passwd", "./rel/x.pt and /etc/passwd"),
    ],
)
def test_model_paths_become_file_names(message: str, shown: str) -> None:
    assert public_message(message) == shown


def test_paths_in_darkroom_folders_become_relative(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path / "data"), models_dir=str(tmp_path / "models"))
    message = (
        f"cannot read {settings.uploads_path}/ab/x.png nor {settings.models_path}/loras/a.safetensors "
        f"in {settings.data_path}; /etc/passwd and {settings.data_path}2/x stay"
    )
    shown = relative_paths(message, settings.folders)
    kept = f"/etc/passwd and {settings.data_path}2/x stay"  # not in a folder of darkroom's
    assert shown == f"cannot read uploads/ab/x.png nor loras/a.safetensors in .; {kept}"
    entries = relative_paths([{"loc": ["body"], "msg": message}], settings.folders)
    assert entries == [{"loc": ["body"], "msg": shown}]


def test_the_root_is_never_one_of_darkroom_folders() -> None:
    settings = load_settings({}, data_dir="/", models_dir="/")
    assert Path("/") not in settings.folders and relative_paths("/a/b", settings.folders) == "/a/b"

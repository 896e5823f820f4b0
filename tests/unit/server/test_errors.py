"""What a client may see of a worker's error message."""

from __future__ import annotations

import pytest

from server.errors import public_message


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

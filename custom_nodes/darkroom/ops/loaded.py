"""Which model files a worker holds: darkroom's loaders label what they build with the files it came
from, and ComfyUI's own list of loaded models (``comfy.model_management.current_loaded_models``) says
which of them are on the device now and how many bytes they take there."""

from __future__ import annotations

from typing import Any

import comfy.model_management as mm

_LABEL = "_darkroom_files"  # on the torch module, which every clone of its ModelPatcher shares


def remember(loaded: Any, kind: str, *files: str) -> None:
    """Label a ModelPatcher, CLIP or VAE with its kind and the file names it was loaded from."""
    patcher = getattr(loaded, "patcher", loaded)  # CLIP and VAE hold their ModelPatcher
    setattr(patcher.model, _LABEL, (kind, list(files)))


def loaded_models() -> list[dict[str, Any]]:
    """Every model ComfyUI keeps loaded: kind and files (None for ones darkroom did not load), model
    class, device, bytes on the device and in all."""
    described = []
    for entry in list(mm.current_loaded_models):
        patcher = entry.model
        if patcher is None:  # collected, not yet dropped from the list
            continue
        kind, files = getattr(patcher.model, _LABEL, (None, None))
        described.append({
            "kind": kind, "files": files, "class": type(patcher.model).__name__, "device": str(entry.device),
            "loaded_bytes": int(entry.model_loaded_memory()), "size_bytes": int(entry.model_memory()),
        })  # fmt: skip
    return described

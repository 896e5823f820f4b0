"""The image safety classifier's file layout and the verdicts it hands on (no ComfyUI).

The classifier is a ViT image classifier in transformers' ``ViTForImageClassification`` key layout, as
Falconsai/nsfw_image_detection's ``model.safetensors`` holds it (ViT-Base/16 at 224 px, labels
0 ``normal`` and 1 ``nsfw``). Its widths, depth, patch and image size are read off the weights, so a
tiny file of the same layout loads the same way; the head count is not in the shapes: a file may say
it in its metadata (``num_attention_heads``), otherwise it is the width over 64, as in every ViT of
that family (Base 768/12, Large 1024/16, Huge 1280/16).

A verdict travels from the checker node to the save node as JSON: ``{"nsfw": [bool, ...]}`` when the
classifier ran, ``{"nsfw": null, "note": why}`` when it did not (its weights are absent).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .arch import ModelFileError

HEAD_WIDTH = 64  # ViT-Base/Large/Huge: width / heads
NSFW_LABEL = 1  # Falconsai/nsfw_image_detection's config: {0: normal, 1: nsfw}
NORMALISE_MEAN, NORMALISE_STD = 0.5, 0.5  # its ViTImageProcessor: (x - 0.5) / 0.5 on 0..1 pixels
_PREFIX = "vit."
_PATCH = f"{_PREFIX}embeddings.patch_embeddings.projection.weight"
_POSITIONS = f"{_PREFIX}embeddings.position_embeddings"
_LAYER_KEYS = (
    "attention.attention.query.weight", "attention.attention.query.bias",
    "attention.attention.key.weight", "attention.attention.key.bias",
    "attention.attention.value.weight", "attention.attention.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
    "layernorm_before.weight", "layernorm_before.bias", "layernorm_after.weight", "layernorm_after.bias",
)  # fmt: skip
_OTHER_KEYS = (
    f"{_PREFIX}embeddings.cls_token", _POSITIONS, _PATCH, _PATCH.replace(".weight", ".bias"),
    f"{_PREFIX}layernorm.weight", f"{_PREFIX}layernorm.bias", "classifier.weight", "classifier.bias",
)  # fmt: skip
EXPECTED = "a ViT image classifier in transformers' ViTForImageClassification layout (vit.*, classifier.*)"


@dataclass(frozen=True)
class ViTShape:
    """What a classifier file's shapes say about its architecture (transformers' ViTConfig names)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_channels: int
    num_labels: int

    def config(self) -> dict[str, int]:
        """ViTConfig keyword arguments."""
        return dict(self.__dict__)


def expected_keys(layers: int) -> set[str]:
    """Every key of a ViTForImageClassification of this depth (no pooler: the classifier reads CLS)."""
    per_layer = {f"{_PREFIX}encoder.layer.{i}.{key}" for i in range(layers) for key in _LAYER_KEYS}
    return per_layer | set(_OTHER_KEYS)


def vit_shape(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> ViTShape:
    """The architecture a classifier file holds, from its tensor shapes; ModelFileError if it is not one."""
    if _PATCH not in shapes or _POSITIONS not in shapes or "classifier.weight" not in shapes:
        raise ModelFileError(f"not {EXPECTED}: no {_PATCH}, {_POSITIONS} or classifier.weight")
    hidden, channels, patch, _ = shapes[_PATCH]
    patches = shapes[_POSITIONS][1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise ModelFileError(f"{_POSITIONS} holds {patches} patches, not a square grid")
    layers = sum(1 for key in shapes if key.endswith(".attention.attention.query.weight"))
    heads = int((metadata or {}).get("num_attention_heads", max(1, hidden // HEAD_WIDTH)))
    intermediate = shapes[f"{_PREFIX}encoder.layer.0.intermediate.dense.weight"][0] if layers else 4 * hidden
    return ViTShape(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, patch_size=patch, image_size=side * patch, num_channels=channels,
        num_labels=shapes["classifier.weight"][0],
    )  # fmt: skip


def checked(flags: Sequence[bool]) -> str:
    """The verdict of a classifier that ran: one flag per image."""
    return json.dumps({"nsfw": [bool(flag) for flag in flags]})


def unchecked(note: str) -> str:
    """The verdict when no classifier ran, and why."""
    return json.dumps({"nsfw": None, "note": note})


def read_verdict(text: str, count: int) -> tuple[list[bool | None], str | None]:
    """Per-image flags (None: not checked) and the note, from a verdict; ValueError if it is malformed."""
    verdict: Any = json.loads(text)
    flags = verdict.get("nsfw") if isinstance(verdict, dict) else ...
    if flags is None:
        return [None] * count, str(verdict.get("note") or "not checked")
    if not isinstance(flags, list) or len(flags) != count or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"a safety verdict holds one boolean per image ({count}), got {text!r}")
    return list(flags), None

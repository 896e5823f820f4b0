"""The image safety classifier on the worker's device: loaded once per file (transformers' ViT, built
from the shapes of its weights), run on a batch of decoded images; flagged images become black.

Black is what fal answers for an image its checker flags, as far as public material shows: users of its
API report black images for flagged prompts (gokayfem/ComfyUI-fal-API#4), with ``has_nsfw_concepts``
true, as the diffusers/CompVis safety checker (zeros of the same size) does; fal does not document it.
Memory: the classifier's weights (ViT-Base: 85.8M parameters, 343 MB in fp32) stay in RAM between runs
and go to the device only while a batch is classified; activations are those of 224 x 224 inputs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import safetensors
import torch

from ..formats.arch import ModelFileError
from ..formats.model_files import check_keys
from ..formats.safety import EXPECTED, NORMALISE_MEAN, NORMALISE_STD, NSFW_LABEL, expected_keys, vit_shape

log = logging.getLogger(__name__)

_cache: dict[str, tuple[tuple[int, int], Any]] = {}  # path -> ((mtime_ns, size), model): one file kept
_lock = threading.Lock()


def load_classifier(path: Path) -> Any:
    """The classifier in ``path`` (cached while the file is unchanged), in eval mode on the CPU."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        model = _build(path)
        _cache.clear()
        _cache[str(path)] = (stamp, model)
        return model


def _build(path: Path) -> Any:
    from transformers import ViTConfig, ViTForImageClassification

    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    try:
        shape = vit_shape({key: tuple(value.shape) for key, value in state.items()}, metadata)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}. Use Falconsai/nsfw_image_detection's model.safetensors") from e
    expected = expected_keys(shape.num_hidden_layers)
    fix = (
        "use Falconsai/nsfw_image_detection's model.safetensors (darkroom models fetch nsfw-image-detection)"
    )
    check_keys(path, sorted(expected - set(state)), sorted(set(state) - expected), expected=EXPECTED, fix=fix)
    config = ViTConfig(**shape.config(), attn_implementation="eager")
    with torch.device("meta"):  # no random initialisation: the file's tensors become the parameters
        model = ViTForImageClassification(config)
    model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True, assign=True)
    log.info("safety classifier %s: %s", path.name, shape)
    return model.eval()


def classify(model: Any, images: torch.Tensor) -> list[bool]:
    """One flag per image of ``images`` ([B, H, W, C] in 0..1): the NSFW label scores highest."""
    size = int(model.config.image_size)
    device = mm.get_torch_device()
    pixels = images[..., :3].movedim(-1, 1).float()
    pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
    pixels = (pixels.clamp(0.0, 1.0) - NORMALISE_MEAN) / NORMALISE_STD
    model.to(device)
    try:
        with torch.inference_mode():
            logits = model(pixel_values=pixels.to(device)).logits
    finally:
        model.to(mm.unet_offload_device())
    return [bool(flag) for flag in (logits.argmax(dim=-1) == NSFW_LABEL).tolist()]


def sampled_frames(count: int, samples: int) -> list[int]:
    """``samples`` frame indices spread evenly over ``count`` frames, first and last included."""
    if samples >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(1, samples - 1)) for i in range(samples)})


def blacken(images: torch.Tensor, flags: list[bool]) -> torch.Tensor:
    """``images`` with each flagged one replaced by black of its size; unchanged if none is flagged."""
    if not any(flags):
        return images
    keep = torch.tensor([not flag for flag in flags], dtype=images.dtype, device=images.device)
    return images * keep.view(-1, *([1] * (images.dim() - 1)))

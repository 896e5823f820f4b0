"""What the safety checker's tests need: a tiny classifier with constructed (not trained) weights, and a
tiny FLUX.2 VAE whose decoder paints every image one colour, so a real generation can be the image the
classifier was built to flag.

The classifier is transformers' ViTForImageClassification (Falconsai/nsfw_image_detection's layout and
224 px input) at width 64, two layers, with weights set by hand so that its NSFW logit is a function of
the image's colours: the patch embedding takes each patch's mean R, G and B; the first layer's attention
(zero queries and keys, so uniform) averages them into the CLS token; everything else passes through; the
head scores R - G + B. It flags an image whose mean colour is near magenta (R - G + B above about 1.75 on
0..1 channels) and nothing a tiny random model draws. The magenta VAE is the tiny FLUX.2 VAE with its
last convolution zeroed and its bias set to (1, -1, 1): whatever the latent, it decodes to (1, 0, 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .encoders import flux2_vae, write

WIDTH, LAYERS, INTERMEDIATE, PATCH, IMAGE = 64, 2, 128, 16, 224
_CONSTANT = 32.0  # two channels at +-32 keep every token's LayerNorm scale near 32 * sqrt(2 / 64)
_MIX = 5  # channels 5..7 of the CLS token receive the mean colour
_GAIN, _THRESHOLD = 1000.0, 78.0  # logit = 1000 * (r - g + b features) - 78: magenta about +16, white -47


def classifier() -> dict[str, torch.Tensor]:
    """The tiny NSFW classifier's state dict: the real key layout, constructed weights."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=1, intermediate_size=INTERMEDIATE,
        patch_size=PATCH, image_size=IMAGE, num_labels=2,
    )  # fmt: skip
    state = {
        key: torch.zeros_like(value) for key, value in ViTForImageClassification(config).state_dict().items()
    }
    for key in state:
        if "layernorm" in key and key.endswith("weight"):
            state[key].fill_(1.0)
    patch = state["vit.embeddings.patch_embeddings.projection.weight"]
    for colour in range(3):
        patch[colour, colour] = 1.0 / (PATCH * PATCH)  # the patch's mean of this colour
    for key in ("vit.embeddings.patch_embeddings.projection.bias", "vit.embeddings.cls_token"):
        state[key].view(-1)[3:5] = torch.tensor([_CONSTANT, -_CONSTANT])
    first = "vit.encoder.layer.0.attention"
    for colour in range(3):
        state[f"{first}.attention.value.weight"][colour, colour] = 1.0
        state[f"{first}.output.dense.weight"][_MIX + colour, colour] = 1.0
    head = state["classifier.weight"][1]
    head[_MIX : _MIX + 3] = torch.tensor([_GAIN, -_GAIN, _GAIN])
    state["classifier.bias"][1] = -_THRESHOLD
    return state


def magenta_vae() -> dict[str, torch.Tensor]:
    """The tiny FLUX.2 VAE, decoding every latent to magenta."""
    state = flux2_vae()
    state["decoder.conv_out.weight"] = torch.zeros_like(state["decoder.conv_out.weight"])
    state["decoder.conv_out.bias"] = torch.tensor(
        [1.0, -1.0, 1.0], dtype=state["decoder.conv_out.bias"].dtype
    )
    return state


FILES = {
    "safety_checkers/tiny/nsfw-vit.safetensors": classifier,
    "vae/tiny/flux2-vae-magenta.safetensors": magenta_vae,
}


def build(models_dir: Path) -> list[Path]:
    """Write the tiny safety checker and the magenta VAE under `models_dir` (same bytes on every run)."""
    return write(models_dir, FILES)

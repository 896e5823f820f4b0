"""Loader nodes for text encoders and VAEs whose sizes are read off the weights (see encoders.py, vae.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..formats.arch import ModelFileError
from ..ops.encoders import TextEncoderFamily, inspect_text_encoder, load_text_encoder
from ..ops.loaded import remember
from ..ops.vae import VAEFamily, inspect_vae, load_vae

NO_FILE = "none"
_OVERRIDE_EXAMPLE = '{"t5xxl": {"num_layers": 24}}'


def parse_config_override(text: str) -> dict[str, dict[str, Any]] | None:
    """The config_override input as a dict of model name -> config fields (None when blank)."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config_override is not valid JSON ({e}); expected e.g. {_OVERRIDE_EXAMPLE}") from e
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"config_override must map model names to objects, e.g. {_OVERRIDE_EXAMPLE}")
    return value


def _paths(name: str, family: str, second_name: str) -> list[Path]:
    """The files to load: one, or two for flux1; ValueError on a wrong count for the family."""
    if family == TextEncoderFamily.FLUX1.value and second_name == NO_FILE:
        raise ValueError("flux1 needs two files, CLIP-L and T5-XXL: set text_encoder_name_2")
    if family != TextEncoderFamily.FLUX1.value and second_name != NO_FILE:
        raise ValueError(f"{family} takes one text encoder file: set text_encoder_name_2 to {NO_FILE}")
    names = [name] if second_name == NO_FILE else [name, second_name]
    return [Path(folder_paths.get_full_path_or_raise("text_encoders", n)) for n in names]


class DarkroomTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list("text_encoders")
        return io.Schema(
            node_id="DarkroomTextEncoderLoader",
            display_name="Load Text Encoder (darkroom)",
            category="darkroom/loaders",
            description="Loads a FLUX.2, FLUX.1, Wan or Z-Image text encoder at any size, reading it off "
            "the weights.",
            inputs=[
                io.Combo.Input(
                    "text_encoder_name",
                    options=files,
                    tooltip="Text encoder file: Mistral-3 for flux2, CLIP-L or T5-XXL for flux1, "
                    "umt5-xxl for wan, Qwen3-4B for zimage.",
                ),
                io.Combo.Input(
                    "family",
                    options=[f.value for f in TextEncoderFamily],
                    default=TextEncoderFamily.FLUX2.value,
                    tooltip="Model family the encoder is for; the file must match it.",
                ),
                io.Combo.Input(
                    "text_encoder_name_2",
                    options=[NO_FILE, *files],
                    default=NO_FILE,
                    optional=True,
                    tooltip="Second file, for flux1 only (CLIP-L and T5-XXL, either order); none otherwise.",
                ),
                io.String.Input(
                    "config_override",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip=f"Optional JSON config fields per model, over those read off the weights: "
                    f"{_OVERRIDE_EXAMPLE}.",
                ),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def validate_inputs(
        cls,
        text_encoder_name: str | None = None,
        family: str | None = None,
        text_encoder_name_2: str | None = NO_FILE,
        config_override: str | None = "",
    ) -> bool | str:
        """Header-only checks, so a wrong file or combination fails at queue time, not mid-run."""
        if text_encoder_name is None or family is None or text_encoder_name_2 is None:
            return True  # linked inputs: checked when the node runs
        try:
            inspect_text_encoder(
                _paths(text_encoder_name, family, text_encoder_name_2),
                family,
                config_override=parse_config_override(config_override or ""),
            )
        except (ModelFileError, ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls,
        text_encoder_name: str,
        family: str,
        text_encoder_name_2: str = NO_FILE,
        config_override: str = "",
    ) -> io.NodeOutput:
        clip = load_text_encoder(
            _paths(text_encoder_name, family, text_encoder_name_2),
            family,
            config_override=parse_config_override(config_override),
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
        remember(clip, "text_encoder", *(n for n in (text_encoder_name, text_encoder_name_2) if n != NO_FILE))
        return io.NodeOutput(clip)


class DarkroomVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomVAELoader",
            display_name="Load VAE (darkroom)",
            category="darkroom/loaders",
            description="Loads a FLUX.2, FLUX.1, Wan 2.1 or Wan 2.2 VAE at any width, read off the weights.",
            inputs=[
                io.Combo.Input(
                    "vae_name",
                    options=folder_paths.get_filename_list("vae"),
                    tooltip="VAE file from the vae folder.",
                ),
                io.Combo.Input(
                    "family",
                    options=[f.value for f in VAEFamily],
                    default=VAEFamily.FLUX2.value,
                    tooltip="Model family the VAE is for. Latents: flux2 128 ch at 1/16, flux1 16 ch at 1/8, "
                    "wan21 16 ch at 1/8, wan22 48 ch at 1/16 (video: 4x in time).",
                ),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, vae_name: str | None = None, family: str | None = None) -> bool | str:
        """Header-only family check, so a wrong file fails at queue time."""
        if vae_name is None or family is None:
            return True
        try:
            inspect_vae(Path(folder_paths.get_full_path_or_raise("vae", vae_name)), family)
        except (ModelFileError, ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, vae_name: str, family: str) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("vae", vae_name))
        vae = load_vae(path, family)
        remember(vae, "vae", vae_name)
        return io.NodeOutput(vae)


NODES: list[type[io.ComfyNode]] = [DarkroomTextEncoderLoader, DarkroomVAELoader]

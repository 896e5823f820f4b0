"""Reference images for edit models: one node that takes any number of them (a request's image_urls),
so a workflow needs no chain of ReferenceLatent nodes per image count, and one that hands up to 3 of them
to nodes with an input per image (Qwen-Image-Edit's text encoder). Node ids are public API."""

from __future__ import annotations

import json
from typing import Any

from comfy_api.latest import io

from ..ops.references import add_references, load_image

DEFAULT_TOTAL_PIXELS = 1024 * 1024  # ComfyUI's FLUX.2 edit template scales references to 1 megapixel


IMAGE_SLOTS = 3  # TextEncodeQwenImageEditPlus takes image1..image3


def parse_names(images: str) -> list[str]:
    """The images input: a JSON list of input-folder file names, or one file name."""
    names = json.loads(images or "[]") if images.lstrip().startswith("[") or not images else [images]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"images must be a JSON list of file names, got {images!r}")
    return names


class DarkroomReferenceImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomReferenceImages",
            display_name="Reference Images (darkroom)",
            category="darkroom/conditioning",
            description="Encodes each image with the VAE and appends it to the conditioning's reference "
            "latents in order (as chained ReferenceLatent nodes): FLUX.2 edit, FLUX.1 Kontext, "
            "Qwen-Image-Edit.",
            inputs=[
                io.Conditioning.Input(
                    "conditioning", tooltip="The prompt's conditioning; the images' latents are added to it."
                ),
                io.Vae.Input("vae", tooltip="The VAE that encodes each image (the model's own)."),
                io.String.Input(
                    "images",
                    default="[]",
                    tooltip='JSON list of files in the input folder, e.g. ["a.png"], or one file name.',
                ),
                io.Int.Input(
                    "total_pixels",
                    default=DEFAULT_TOTAL_PIXELS,
                    min=256,
                    max=16 * 1024 * 1024,
                    tooltip="Each image is scaled to about this many pixels (aspect kept, sides of 16).",
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning: Any, vae: Any, images: str, total_pixels: int) -> io.NodeOutput:
        return io.NodeOutput(add_references(conditioning, vae, parse_names(images), total_pixels))


class DarkroomLoadImages(io.ComfyNode):
    """A request's image list as separate IMAGE outputs, for nodes with one input per image
    (TextEncodeQwenImageEditPlus's image1..image3); the slots past the list's end are left empty."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLoadImages",
            display_name="Load Images (darkroom)",
            category="darkroom/image",
            description="Loads up to 3 images from the input folder into image1..image3; the slots past "
            "the list's end output nothing, so an optional input fed from one stays unset.",
            inputs=[
                io.String.Input(
                    "images",
                    default="[]",
                    tooltip=f'JSON list of 1 to {IMAGE_SLOTS} files in the input folder, e.g. ["a.png", '
                    '"b.png"], or one file name.',
                ),
            ],
            outputs=[io.Image.Output(display_name=f"image{i + 1}") for i in range(IMAGE_SLOTS)],
        )

    @classmethod
    def execute(cls, images: str) -> io.NodeOutput:
        names = parse_names(images)
        if not 1 <= len(names) <= IMAGE_SLOTS:
            raise ValueError(f"images takes 1 to {IMAGE_SLOTS} files, got {len(names)}")
        loaded = [load_image(name) for name in names]
        return io.NodeOutput(*loaded, *[None] * (IMAGE_SLOTS - len(loaded)))


NODES: list[type[io.ComfyNode]] = [DarkroomReferenceImages, DarkroomLoadImages]

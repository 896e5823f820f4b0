"""Upscaling to fal's esrgan surface: a model's native factor, tiled, then resized to the exact scale
asked for. Node ids are public API."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..ops.upscale import DEFAULT_TILE, upscale


class DarkroomUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomUpscale",
            display_name="Upscale Image by (darkroom)",
            category="darkroom/image",
            description="Upscales with an upscale model tile by tile (bounded memory), then resizes to "
            "exactly `scale` times the input's size.",
            inputs=[
                io.UpscaleModel.Input("upscale_model"),
                io.Image.Input("image"),
                io.Float.Input("scale", default=2.0, min=0.01, max=16.0, step=0.01),
                io.Int.Input(
                    "tile", default=0, min=0, max=4096, tooltip=f"Tile side in px; 0 = {DEFAULT_TILE}."
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, upscale_model: Any, image: Any, scale: float, tile: int) -> io.NodeOutput:
        return io.NodeOutput(upscale(upscale_model, image, scale, tile))


NODES: list[type[io.ComfyNode]] = [DarkroomUpscale]

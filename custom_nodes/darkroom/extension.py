"""The one ComfyExtension of the pack: node classes gathered from the modules of ``nodes``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes import (
    audio_encoder,
    diffusion,
    encoders,
    extras,
    inputs,
    ltxav,
    media_inputs,
    output,
    references,
    safety,
    sampling,
    training,
    upscale,
)


class DarkroomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            *diffusion.NODES, *encoders.NODES, *output.NODES, *extras.NODES, *sampling.NODES, *inputs.NODES,
            *references.NODES, *upscale.NODES, *safety.NODES, *media_inputs.NODES, *ltxav.NODES,
            *training.NODES, *audio_encoder.NODES,
        ]  # fmt: skip

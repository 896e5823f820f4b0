"""The one ComfyExtension of the pack: node classes gathered from the nodes_* modules."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import nodes_diffusion, nodes_encoders, nodes_extras, nodes_output, nodes_sampling


class DarkroomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            *nodes_diffusion.NODES,
            *nodes_encoders.NODES,
            *nodes_output.NODES,
            *nodes_extras.NODES,
            *nodes_sampling.NODES,
        ]

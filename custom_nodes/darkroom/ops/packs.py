"""The node ids each installed third-party pack declares, read from the modules ComfyUI loaded from the
packs' folder (``DARKROOM_NODE_PACKS_DIR``, set by darkroom's supervisor). ComfyUI keeps only the last
definition of a node id two packs both declare; /object_info's ``python_module`` says whose it kept, so
darkroom finds an override by comparing the two."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any


async def declared_nodes() -> dict[str, list[str]]:
    """``{pack folder name: [node id, ...]}`` for each pack module ComfyUI ran (a failed one too)."""
    root = os.environ.get("DARKROOM_NODE_PACKS_DIR")
    if not root:
        return {}
    prefix = os.path.join(root, "").replace(".", "_x_")  # ComfyUI's module name for a folder module
    declared = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(prefix) and os.sep not in module_name[len(prefix) :]:
            declared[module_name[len(prefix) :].replace("_x_", ".")] = await _node_ids(module)
    return declared


async def _node_ids(module: Any) -> list[str]:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if isinstance(mappings, dict):
        return sorted(mappings)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if not callable(entrypoint):
        return []
    try:  # a V3 pack: its extension lists its node classes
        extension = entrypoint()
        if inspect.isawaitable(extension):
            extension = await extension
        return sorted(node.GET_SCHEMA().node_id for node in await extension.get_node_list())
    except Exception:  # noqa: BLE001 - a pack's failure is reported as its import failure
        return []

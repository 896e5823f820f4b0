"""darkroom's ComfyUI node pack, layered like ComfyUI-GGUF; a module imports only from layers below:

    extension | routes   the pack's one ComfyExtension | its HTTP routes on ComfyUI's server
    | tiny               tiny random-weight models for tests (apart)
    nodes                v3 node classes (io.ComfyNode schemas): the public node IDs, thin execute()
    ops                  what needs ComfyUI: loaders, LoRA stacks, model blends, sampler overrides
    formats              no ComfyUI: model-file layouts and quantisation, LoRA key names, override
                         specs, output encodings; offline tools and unit tests import these directly

ComfyUI is imported only when ComfyUI asks for the extension. ``tests/unit/test_layers.py`` checks the
layers (import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

# The pack's editor extension ("Publish to darkroom"), served by ComfyUI under /extensions/darkroom/.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint() -> Any:
    from . import routes
    from .extension import DarkroomExtension

    routes.register()
    return DarkroomExtension()

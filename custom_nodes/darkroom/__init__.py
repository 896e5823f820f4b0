"""darkroom's ComfyUI node pack.

ComfyUI is imported only when ComfyUI asks for the extension, so the lower layers (`arch`, `quant`,
`checkpoint`, `media`) import without it: offline tools and unit tests use them directly.
"""

from __future__ import annotations

from typing import Any


async def comfy_entrypoint() -> Any:
    from .extension import DarkroomExtension

    return DarkroomExtension()

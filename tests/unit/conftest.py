"""Unit tests may import the node pack's lower layers (no ComfyUI) as `darkroom.*`."""

from __future__ import annotations

import sys

from server.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "custom_nodes"))

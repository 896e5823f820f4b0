"""Run a drill script (``scripts/drill_*.py``) on the real stack and read the figures it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from server.settings import PROJECT_ROOT


def run_drill(name: str, *args: str, comfyui_dir: Path, models_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``scripts/drill_<name>.py`` with ``args``; answer its last ``FIGURES`` line (printed here too,
    so the test log holds the figures), with ``returncode`` and ``tail`` (its last output) added."""
    script = PROJECT_ROOT / "scripts" / f"drill_{name}.py"
    done = subprocess.run(
        [sys.executable, str(script), *args, "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, "DARKROOM_COMFYUI_DIR": str(comfyui_dir)},
    )  # fmt: skip
    figures = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
    tail = f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    print(figures[-1] if figures else tail)
    assert figures, f"drill_{name} printed no figures:\n{tail}"
    found: dict[str, Any] = json.loads(figures[-1][len("FIGURES ") :])
    return {**found, "returncode": done.returncode, "tail": tail}

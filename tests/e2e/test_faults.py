"""The fault drill (``scripts/drill_faults.py``) in make test: the facade SIGKILLed with 100 requests
queued and running loses none, a full disk fails one run with 507 and the server keeps serving, SIGTERM
lets the running request finish. Its figures are printed here too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import PROJECT_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.timeout(400)]


def test_the_fault_drill_loses_nothing(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "drill_faults.py"), "--requests", "100",
         "--models-dir", str(tiny_models_dir)],
        capture_output=True, text=True, timeout=360,
        env={**os.environ, "DARKROOM_COMFYUI_DIR": str(comfyui_dir)},
    )  # fmt: skip
    figures = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
    print(figures[-1] if figures else done.stdout[-3000:])
    assert figures, f"the drill printed no figures:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    found = json.loads(figures[-1][len("FIGURES ") :])
    assert done.returncode == 0 and not found["failures"], found
    assert found["kill9"]["ok"] == 100 and found["sigterm"]["ok"] == 4
    if "skipped" in found["disk_full"]:
        assert os.geteuid() != 0, f"root can mount a tmpfs: {found['disk_full']}"
        print(f"disk-full phase skipped: {found['disk_full']['skipped']}")

"""Run a drill script (``scripts/drill_*.py``) on the real stack and read the figures it printed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

from server.settings import PROJECT_ROOT


def run_drill(name: str, *args: str, comfyui_dir: Path, models_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``scripts/drill_<name>.py`` with ``args``; answer its last ``FIGURES`` line (printed here too,
    so the test log holds the figures), with ``returncode`` and ``tail`` (its last output) added."""
    script = PROJECT_ROOT / "scripts" / f"drill_{name}.py"
    command = [sys.executable, str(script), *args, "--models-dir", str(models_dir)]
    env = {**os.environ, "DARKROOM_COMFYUI_DIR": str(comfyui_dir)}
    # Its own process group: past its time, the drill and the `darkroom serve` it started are stopped
    # together (SIGTERM first, so serve stops its ComfyUI workers), never left running.
    with subprocess.Popen(
        command, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True
    ) as drill:
        try:
            stdout, stderr = drill.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(drill)
            stdout, stderr = drill.communicate()
            raise AssertionError(
                f"drill_{name} ran past {timeout_s} s:\n{stdout[-6000:]}\n{stderr[-3000:]}"
            ) from None
    done = subprocess.CompletedProcess(command, drill.returncode, stdout, stderr)
    figures = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
    tail = f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    print(figures[-1] if figures else tail)
    assert figures, f"drill_{name} printed no figures:\n{tail}"
    found: dict[str, Any] = json.loads(figures[-1][len("FIGURES ") :])
    return {**found, "returncode": done.returncode, "tail": tail}


def _stop_group(process: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

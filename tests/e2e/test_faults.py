"""The fault drill (``scripts/drill_faults.py``) in make test: the facade SIGKILLed with 60 requests
queued and running loses none; a worker SIGSTOPped mid-request is killed by the watchdog, restarted, and
the request runs once more and completes; a full disk fails one run with 507 and the server keeps
serving; SIGTERM lets the running request finish. Its figures are printed here too (about 100 s here).
tests/e2e/test_watchdog.py covers the watchdog in-process; this is the same through `darkroom serve`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.drills import run_drill

pytestmark = [pytest.mark.stack, pytest.mark.timeout(400)]


def test_the_fault_drill_loses_nothing(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    found = run_drill(
        "faults", "--requests", "60", comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=360
    )
    assert found["returncode"] == 0 and not found["failures"], found
    assert found["kill9"]["ok"] == 100 and found["sigterm"]["ok"] == 4
    hang = found["hang"]
    assert hang["ok"] == 1 and hang["run_again"] == 1 and hang["restarts"] == 1 and hang["watchdog_killed"]
    assert hang["detected_s"] < hang["hang_timeout_s"] * 3, f"the watchdog took {hang['detected_s']} s"
    if "skipped" in found["disk_full"]:
        assert os.geteuid() != 0, f"root can mount a tmpfs: {found['disk_full']}"
        print(f"disk-full phase skipped: {found['disk_full']['skipped']}")

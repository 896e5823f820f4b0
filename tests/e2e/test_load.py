"""A small round of the load drill (``scripts/drill_load.py``; the full one is 1,000 submissions, 100
WebSocket subscribers and 100 pollers): concurrent submissions past the queue's limit are each accepted
or refused with 429, every accepted request completes exactly once, the facade's memory stays bounded.
Its figures (status p99, peak RSS) are printed here too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.drills import run_drill

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def test_a_load_round_loses_nothing_and_runs_nothing_twice(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    found = run_drill(
        "load", "--submissions", "160", "--subscribers", "20", "--pollers", "20", "--queue-max", "130",
        "--max-rss-mib", "512", comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=270,
    )  # fmt: skip
    assert found["returncode"] == 0 and not found["failures"], found
    assert found["accepted"] >= 130 and found["refused_429"] > 0, (
        "the queue refuses past its limit, not before"
    )
    assert found["completed"] == found["accepted"] and found["status_polls"] > 0

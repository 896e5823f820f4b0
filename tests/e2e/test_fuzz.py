"""A short, seeded round of the fuzz drill (``scripts/drill_fuzz.py``: schemathesis over darkroom's
/openapi.json against `darkroom serve` on the real stack): no 5xx, no answer the document does not
describe, no hang. This round leaves out the runs and submits (``--skip-generation``): the full drill
still finds a fuzzed FLUX.1 demo run that stalls its worker past the run limit (open, in issue 13's
notes), and a known failure must not block every other change. Its figures are printed here too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.drills import run_drill

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def test_a_seeded_fuzz_round_finds_nothing(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    found = run_drill(
        "fuzz", "--max-examples", "2", "--max-time-s", "180", "--skip-generation",
        comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=540,
    )  # fmt: skip
    assert found["cases"] > 0 and found["operations"] >= 30, f"too few operations reached: {found}"
    assert not found["key_in_log"], "the API key is in the server's log"
    assert found["returncode"] == 0 and found["failures"] == 0, f"{found}"

"""A bounded round of the fuzz drill (``scripts/drill_fuzz.py``: schemathesis over darkroom's
/openapi.json against `darkroom serve` on the real stack), generation included: the CPU demos' runs and
queue submits, and the stateful links (submit -> status -> result -> cancel, uploads -> their files).
Every schemathesis check but the auth-mutation one (see the script's docstring): no 5xx, no answer the
document does not describe, schema-valid requests accepted and schema-violating ones refused, 405s with
the exact Allow, no hang; the only refusals of well-formed requests it tolerates are those the document
declares, by error type. Deterministic cases, two examples per operation, fuzzing and links for 50 s;
the coverage phase skips the demos' sync runs and all but two of their queue submits (NO_COVERAGE_FOR),
which the fuzzing and stateful phases still send."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.drills import run_drill

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]

# The coverage phase is skipped for every demo's sync run and for its queue submit but two (an image
# family's and a video family's): each of the phase's hundreds of cases per app that the schema accepts is
# a generation on the CPU, and with 19 demos that outran the round's limit. The run and submit of an app
# share one request model; the fuzzing and stateful phases still send every one of them.
NO_COVERAGE_FOR = r"^/run/darkroom/|^/queue/darkroom/(?!demo-flux-2$|demo-wan-2\.2-5b-t2v$)"


def test_a_bounded_fuzz_round_with_generation_finds_nothing(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    found = run_drill(
        "fuzz", "--max-examples", "2", "--max-time-s", "50", "--no-coverage-for", NO_COVERAGE_FOR,
        comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=360,
    )  # fmt: skip
    assert found["cases"] > 0 and found["operations"] >= 90, f"too few operations reached: {found}"
    assert found["prompts_run"] > 0, f"no run or submit reached a worker: {found}"
    assert found.get("stateful_scenarios", 0) > 0, f"no stateful links were followed: {found}"
    assert not found["key_in_log"], "the API key is in the server's log"
    assert found["returncode"] == 0 and found["failures"] == 0, f"{found}"

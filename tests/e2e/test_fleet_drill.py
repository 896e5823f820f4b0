"""The fleet drill (``scripts/drill_fleet.py``) in full: three `darkroom serve` hosts with CPU workers on
one real PostgreSQL (the session's cluster, a fresh database): 120 requests complete exactly once,
spread over the hosts, read back from hosts that did not run them, webhooks once each; live progress
relayed to every host; a request runs only where its model files are; cancel across hosts; a host
killed -9 mid-run, its request finished by another host within the lease bound. Figures printed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.drills import run_drill
from tests.postgres import PostgresServer

REQUESTS = 120

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]


def test_a_fleet_of_three_hosts_loses_nothing_and_runs_nothing_twice(
    comfyui_dir: Path, tiny_models_dir: Path, postgres_server: PostgresServer
) -> None:
    found = run_drill(
        "fleet", "--requests", str(REQUESTS), "--lease-s", "3", "--database-url", postgres_server.database(),
        comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=400,
    )  # fmt: skip
    assert found["returncode"] == 0 and not found["failures"], found
    assert found["spread_run_once"] == REQUESTS and len(found["spread_runs_per_host"]) == 3
    assert found["rerun_on"] and found["rerun_on"] != [found["killed"]]

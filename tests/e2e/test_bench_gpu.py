"""scripts/bench_gpu.py --smoke: the GPU benchmark's code at tiny sizes on the CPU, against the session's
darkroom (its /queue and its worker's raw /prompt), so the day a GPU is lent it runs first time. Figures
on a shared CPU mean nothing; what is checked is that every case ran and reported sane numbers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from server.settings import PROJECT_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


async def test_bench_gpu_smoke_runs_every_case(facade: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROJECT_ROOT / "scripts" / "bench_gpu.py"), "--smoke", "--no-compile",
        "--darkroom", str(facade.make_url("")).rstrip("/"), "--json", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    printed = (await asyncio.wait_for(process.communicate(), 120))[0].decode(errors="replace")
    assert process.returncode == 0, printed
    figures = json.loads(out.read_text())
    cases = figures["cases"]
    assert not [c for c, v in cases.items() if "skipped" in v], printed
    for mode in ("bf16", "fp8", "fp8-fast"):
        assert 0 < cases[f"flux2-dev {mode}"]["s_per_step"] < 60
        assert cases[f"flux2-dev {mode}"]["images_per_min"] > 0
    wan = cases["wan2.2-a14b bf16 (one expert)"]
    assert [c["frames"] for c in wan["clips"]] == [5, 9] and wan["s_per_step_81_frames"] > 0
    assert wan["formula"] in printed  # the fit, or on a noisy CPU why it was not used
    load = cases["load z-image bf16 page cache -> device"]
    assert load["file_bytes"] > 1_000_000 and load["load_s"] > 0
    overhead = cases["overhead /queue vs POST /prompt"]
    assert overhead["queue_s"] > 0 and overhead["raw_prompt_s"] > 0 and overhead["requests"] == 1
    assert figures["flux2_overhead_ratio"] > 0 and "darkroom overhead on a FLUX.2 [dev] image" in printed
    assert "case" in printed.splitlines()[-len(cases) - 3]  # the table's header, then one row a case

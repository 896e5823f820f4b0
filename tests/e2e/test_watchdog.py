"""A worker that hangs instead of dying (SIGSTOP) is noticed by the supervisor's watchdog, killed and
restarted, and the request it held runs once more: it completes, nothing is lost. A worker whose
prompt outlives its interrupt is restarted too, before it takes another request."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TEST_NODES
from queue_stack import DEMO, own_supervisor, slow_endpoint, submit, wait_status

from server.api.state import ENDPOINTS
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

HANG_TIMEOUT_S = 5.0  # short for the test; generous enough for a loaded 2-core machine


async def test_a_stopped_worker_is_killed_restarted_and_its_request_runs_again(
    stack_settings: Settings, comfyui_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path_factory.mktemp("watchdog")
    async with own_supervisor(
        stack_settings, comfyui_dir, data, nodes=TEST_NODES, worker_hang_timeout_s=HANG_TIMEOUT_S
    ) as (
        supervisor,
        client,
    ):
        request_id = await submit(client, "darkroom/test-pause")  # 2 s on the worker
        await wait_status(client, request_id, "IN_PROGRESS", log="DarkroomTestSlow", timeout_s=60)
        (worker,) = supervisor.workers
        stopped_pid = worker.pid
        assert stopped_pid is not None
        os.killpg(stopped_pid, signal.SIGSTOP)  # alive, holding its socket, answering nothing
        body = await wait_status(client, request_id, timeout_s=120, log="running it again")
        assert "error" not in body, body
        assert worker.pid not in (None, stopped_pid) and worker.restarts == 1


async def test_a_prompt_that_ignores_its_interrupt_gets_its_worker_restarted(
    stack_settings: Settings, comfyui_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run past its limit whose node never checks for an interrupt (one 60 s step here; a text
    encoder on a huge prompt in the fuzz drill) must not keep the worker from the next request.

    The stuck run must be inside its slow node when its limit comes: a first run of the same graph
    and seed fills ComfyUI's cache, so the stuck one starts there at once (otherwise, on a loaded
    machine, the limit could fall in the sampler, which honours the interrupt, and nothing hangs)."""
    data = tmp_path_factory.mktemp("stuck")
    async with own_supervisor(
        stack_settings, comfyui_dir, data, nodes=TEST_NODES, run_timeout_s=120.0, interrupt_grace_s=2.0
    ) as (
        supervisor,
        client,
    ):
        endpoints = client.server.app[ENDPOINTS]
        slow = slow_endpoint(endpoints[DEMO], "darkroom/test-stuck", seconds=60, steps=1)
        endpoints["darkroom/test-stuck"] = replace(slow, run_timeout_s=2.0)
        body = {"prompt": "a red cube", "seed": 7}
        warm = await wait_status(client, await submit(client, body=body), timeout_s=90)
        assert "error" not in warm, warm
        (worker,) = supervisor.workers
        stuck_pid = worker.pid
        started = time.monotonic()
        stuck = await wait_status(client, await submit(client, "darkroom/test-stuck", body), timeout_s=60)
        assert stuck["error_type"] == "request_timeout", stuck
        after = await wait_status(client, await submit(client, body={"prompt": "next"}), timeout_s=90)
        assert "error" not in after, after
        assert time.monotonic() - started < 55, "the next request waited for the stuck step to end"
        assert worker.pid not in (None, stuck_pid) and worker.restarts == 1

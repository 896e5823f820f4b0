"""Helpers for tests that kill the session's worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from server.engine.supervisor import Supervisor


async def kill_worker(supervisor: Supervisor) -> int:
    """SIGKILL the session's one worker and wait until the supervisor notices; returns the old pid."""
    (worker,) = supervisor.workers
    old_pid = worker.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while supervisor.ready:
        assert time.monotonic() < deadline, "supervisor still ready 10 s after its worker was killed"
        await asyncio.sleep(0.05)
    return old_pid

"""Keeps the running workers on the lock's node packs: verifies them once the workers are up, and when
the lock changes (``darkroom nodes add/remove/sync`` on this host, or the fleet's lock arriving through
``source``) installs what is missing, restarts the workers one at a time and verifies again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from server.engine.node_packs import Installer, LockedPack, PackError, lock_digest
from server.engine.pack_check import PackReport, check_packs, pending
from server.engine.supervisor import Supervisor
from server.errors import DarkroomError
from server.settings import Settings

logger = logging.getLogger(__name__)

POLL_S = 2.0
STATUS_NAME = "node_packs.status.json"

# Where the wanted lock comes from: None reads this host's lock file; a fleet passes its database's.
LockSource = Callable[[], Awaitable[Mapping[str, LockedPack] | None]]


class PackWatch:
    """The verified state of this host's node packs (``report``), kept in line with the lock."""

    def __init__(
        self, settings: Settings, supervisor: Supervisor, *, source: LockSource | None = None
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.installer = Installer(settings)
        self.status_path: Path = settings.data_path / STATUS_NAME
        self.source = source
        # A fleet's: where a change made through this host (POST /nodes) is written first
        self.share: Callable[[Mapping[str, LockedPack]], Coroutine[Any, Any, None]] | None = None
        self.changing = asyncio.Lock()  # one add or remove through the API at a time
        self.observers: list[Callable[[], None]] = []  # told after each new report
        self.report = PackReport()

    async def run(self) -> None:
        """Verify once the workers are up, then follow the lock until cancelled."""
        with contextlib.suppress(DarkroomError):  # a worker that failed to start is retried below
            await self.supervisor.wait_ready()
        while True:
            try:
                if self.report.digest:
                    await self.converge()
                else:  # not verified yet: the workers started with the lock as it is
                    await self.verify()
            except (DarkroomError, OSError, aiohttp.ClientError) as e:
                logger.error("node packs: %s", e)
            await asyncio.sleep(POLL_S)

    async def converge(self) -> None:
        """Install (from ``source``), restart and verify if the lock differs from what was verified."""
        wanted = await self.source() if self.source is not None else None
        if wanted is not None and lock_digest(wanted) != lock_digest(self.installer.locked()):
            await self._install(wanted)
        locked = self.installer.locked()
        digest = lock_digest(locked)
        if digest == self.report.digest:
            return
        names = ", ".join(locked) or "none"
        logger.info("node packs changed (now %s); restarting the workers one at a time", names)
        self._publish(pending(locked, digest))
        try:
            await asyncio.to_thread(self.installer.sync)
        except PackError as e:
            logger.error("node packs: %s", e)
        await self.supervisor.restart_rolling(self.settings.worker_start_timeout_s)
        await self.verify()

    async def _install(self, wanted: Mapping[str, LockedPack]) -> None:
        try:
            await asyncio.to_thread(self.installer.sync, wanted)
        except PackError as e:
            logger.error("node packs: installing the fleet's lock failed: %s", e)

    async def verify(self) -> PackReport:
        """Check the packs in a ready worker (every worker loads the same folder) and keep the report."""
        locked = self.installer.locked()
        if not locked:  # nothing to check: no need to ask a worker
            self._publish(PackReport(lock_digest(locked)))
            return self.report
        worker = next((w for w in self.supervisor.workers if w.ready), None)
        if worker is None:
            return self.report
        report = check_packs(
            locked, self.installer.paths.nodes, digest=lock_digest(locked),
            declared=await worker.client.declared_pack_nodes(), object_info=await worker.client.object_info(),
            failed_imports=worker.failed_imports,
        )  # fmt: skip
        for state in report.packs.values():
            log = logger.info if state.state == "ok" else logger.error
            problems = "; ".join(state.problems)
            log("node pack %s@%s: %s %s", state.name, state.commit[:12], state.state, problems)
        self._publish(report)
        return report

    def _publish(self, report: PackReport) -> None:
        self.report = report
        report.save(self.status_path)
        for observer in self.observers:
            observer()

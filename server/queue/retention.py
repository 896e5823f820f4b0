"""The queue's housekeeping: queued jobs past their start deadline end timed out, finished jobs (and
their output files) are deleted past ``retention_s``, and so, once a minute, are sync runs' outputs
(which no job owns). Mixed into ``JobQueue``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from server.generation.progress import ProgressHub
from server.media.outputs import OutputStore
from server.queue.order import QueueOrder
from server.queue.store import START_TIMEOUT, Expected, JobRecord, JobStatus, JobStore, Outcome

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
OUTPUT_SWEEP_INTERVAL_S = 60.0  # sync runs' outputs (no job record) are looked for once a minute


class Retention:
    """See the module docstring."""

    store: JobStore
    hub: ProgressHub
    order: QueueOrder
    outputs: OutputStore
    retention_s: float
    clock: Callable[[], float]
    _stopping: bool
    _outputs_swept_at: float

    async def _finish(
        self, record: JobRecord, outcome: Outcome, output: Any = None, *, expect: Expected
    ) -> bool:
        raise NotImplementedError

    async def _sweep_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                logger.exception("queue sweep failed")

    async def sweep(self) -> None:
        """Time out queued jobs past their start deadline; delete jobs past their retention, and
        (once a minute) output folders past it that no job owns: sync runs' outputs."""
        now = self.clock()
        if now >= self._outputs_swept_at + OUTPUT_SWEEP_INTERVAL_S:
            self._outputs_swept_at, known = now, frozenset(self.order.jobs)
            await asyncio.to_thread(self.outputs.expire, older_than_s=self.retention_s, keep=known)
        await self._time_out_and_expire(now)

    async def _time_out_and_expire(self, now: float) -> None:
        for record in self.order.pending():
            if (
                record.start_deadline is not None
                and record.start_deadline <= now
                and self.order.unqueue(record)
            ):
                await self._finish(record, START_TIMEOUT, expect=Expected(JobStatus.IN_QUEUE))
        await self._expire(
            [
                r.request_id for r in self.order.jobs.values()
                if r.status is JobStatus.COMPLETED and r.expires_at is not None and r.expires_at <= now
            ]
        )  # fmt: skip

    async def _expire(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        await self.store.delete(request_ids)
        for request_id in request_ids:
            self.order.forget(request_id)
            self.hub.forget(request_id)
        await asyncio.to_thread(self.outputs.delete, request_ids)
        logger.info("deleted %d expired request(s) and their outputs", len(request_ids))

"""The fleet side of ``JobQueue`` (``fleet.Member``): how a host's index of every job follows the
database, where other hosts submit, claim, cancel and finish jobs.

Each change another host makes arrives as a notification and is read again from the store, one read
at a time per job (and once more if it changed meanwhile), so reads landing out of order cannot
leave the index stale; an outcome, once indexed, is final. A job running on this host is left alone:
this host is the one that changes it. Live events of a job running elsewhere are published to this
host's subscribers as they are relayed; its outcome comes from the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

from server.generation.live import FINISHED_STATE_TTL_S, completed_event, failed_event
from server.generation.progress import ProgressHub
from server.queue.fleet import Fleet
from server.queue.order import QueueOrder
from server.queue.store import RESTARTED_TWICE, Expected, JobRecord, JobStatus, JobStore, Outcome

logger = logging.getLogger(__name__)

# Each host publishes a job's positions itself, and its outcome reaches the others through the store.
_NOT_RELAYED = frozenset({"queued", "completed", "failed"})


def terminal_event(outcome: Outcome) -> dict[str, Any]:
    """The hub's completed or failed event for a stored outcome."""
    body = json.loads(outcome.body_json) if outcome.body_json else None
    if outcome.ok:
        return completed_event(body)
    detail = body.get("detail") if isinstance(body, dict) else body
    return failed_event(outcome.status_code, detail, outcome.error or "", outcome.error_type or "")


class FleetMember:
    """What ``JobQueue`` does as a fleet host; see the module docstring. Mixed into ``JobQueue``."""

    store: JobStore
    hub: ProgressHub
    order: QueueOrder
    fleet: Fleet | None
    _tasks: dict[str, asyncio.Task[dict[str, Any]]]
    _abandoned: set[str]
    _refreshing: set[asyncio.Task[None]]
    _stale: dict[str, bool]
    _wakeup: asyncio.Event

    async def _finish(
        self, record: JobRecord, outcome: Outcome, output: Any = None, *, expect: Expected
    ) -> bool:
        raise NotImplementedError

    async def find(self, request_id: str) -> JobRecord | None:
        """``get``, and in a fleet a job submitted to another host a moment ago, which this host's
        index may not have heard of yet: read from the store once."""
        record = self.order.jobs.get(request_id)
        if record is not None or self.fleet is None:
            return record
        stored = await self.store.get(request_id)
        return None if stored is None else self._absorb(stored)

    def job_changed(self, request_id: str) -> None:
        # One read at a time per job, again after it if another change came meanwhile: the last
        # read always follows the last change, so reads finishing out of order cannot leave it stale.
        if request_id in self._stale:
            self._stale[request_id] = True
            return
        self._stale[request_id] = False
        self._in_background(self._refresh_until_current(request_id))

    async def _refresh_until_current(self, request_id: str) -> None:
        try:
            while True:
                await self._refresh(request_id)
                if not self._stale[request_id]:
                    return
                self._stale[request_id] = False
        finally:
            del self._stale[request_id]

    def cancel_requested(self, request_id: str) -> None:
        if (task := self._tasks.get(request_id)) is not None:
            task.cancel()

    def event_relayed(self, request_id: str, event: dict[str, Any]) -> None:
        if request_id not in self._tasks and self.order.jobs.get(request_id) is not None:
            self.hub.publish(request_id, event)

    def fenced(self) -> None:
        for request_id, task in self._tasks.items():
            self._abandoned.add(request_id)
            task.cancel()

    def resync(self) -> None:
        self._in_background(self._resync())

    def wake(self) -> None:
        self._wakeup.set()  # a claim may succeed now

    async def orphaned(self, records: list[JobRecord]) -> None:
        for orphan in records:
            logger.error("request %s lost its host on its second run: failing it", orphan.request_id)
            record = self._absorb(orphan)
            await self._finish(
                record, RESTARTED_TWICE, expect=Expected(JobStatus.IN_PROGRESS, orphan.host_id)
            )

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    def _relay_event(self, request_id: str, event: dict[str, Any]) -> None:
        # The live events of a job running here; its outcome reaches the other hosts through the store.
        if self.fleet is not None and request_id in self._tasks and event["type"] not in _NOT_RELAYED:
            self.fleet.relay(request_id, event)

    async def _refresh(self, request_id: str) -> None:
        """Bring one job's index entry in line with the store (another host changed it)."""
        try:
            stored = await self.store.get(request_id)
        except Exception:
            logger.exception("could not read request %s from the job store", request_id)
            return
        if request_id in self._tasks:
            return  # running here (claimed while it was read): this host is the one that changes it
        if stored is None:
            self.order.forget(request_id)
            self.hub.forget(request_id)
        else:
            self._absorb(stored)
        self._wakeup.set()

    async def _resync(self) -> None:
        """Bring the whole index in line with the store (the fleet's slow fallback)."""
        stored = {r.request_id: r for r in await self.store.index()}
        for request_id in [rid for rid in self.order.jobs if rid not in stored and rid not in self._tasks]:
            self.order.forget(request_id)
            self.hub.forget(request_id)
        for record in stored.values():
            self._absorb(record)  # leaves a job running here as it is
        self._wakeup.set()

    def _absorb(self, fresh: JobRecord) -> JobRecord:
        """Merge a record read from the store into the index; returns the index's record."""
        record = self.order.jobs.get(fresh.request_id)
        if record is not None and record.status is JobStatus.COMPLETED:
            return record  # an outcome is final: what differs is a read older than it
        if record is not None and fresh.request_id in self._tasks:
            return record  # running here: this host changes it (a read racing its claim is older)
        settled_elsewhere = fresh.status is JobStatus.COMPLETED and (
            record is None or record.status is not JobStatus.COMPLETED
        )
        if settled_elsewhere and fresh.outcome is not None and self.hub.watched(fresh.request_id):
            if not self.hub.finished(fresh.request_id):
                self.hub.publish(fresh.request_id, terminal_event(fresh.outcome))
            asyncio.get_running_loop().call_later(FINISHED_STATE_TTL_S, self.hub.forget, fresh.request_id)
        elif settled_elsewhere:
            self.hub.forget(fresh.request_id)  # what was relayed; the store has the rest
        if fresh.outcome is not None:
            fresh.outcome = fresh.outcome.without_body()
        if record is None:
            record = fresh
        else:
            vars(record).update(vars(fresh))
        self.order.place(record)
        self.order.publish_positions()
        return record

    def waiting_note(self, record: JobRecord) -> str | None:
        """Why a queued job cannot start anywhere (no live host of the fleet can run its app), or None."""
        if self.fleet is None or record.status is not JobStatus.IN_QUEUE:
            return None
        if record.app_id in self.fleet.runnable_apps or self.fleet.can_run(record.app_id):
            return None
        return (
            f"No live host of the fleet has the model files {record.app_id} needs: the request waits "
            "until a host that has them joins (or its X-Fal-Request-Timeout passes)"
        )

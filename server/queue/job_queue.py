"""The durable queue: runs stored jobs on the workers, cancels them, recovers them after a restart.

``JobQueue`` keeps an in-memory index of every unexpired job (so status polls never touch the
store) and runs up to N jobs at once for N workers; each job borrows its worker through
``Generator.run`` like a sync request, so queue jobs and sync runs share the pool FIFO. A job is
IN_QUEUE until its prompt's first ComfyUI event, then IN_PROGRESS, then COMPLETED with an outcome
(success, error, cancellation, missed start deadline) that is persisted before anyone is told.

Restart: queued jobs run again in order; a job that was running is re-run once, and ends with an
error if it was already a re-run. Finished jobs (and their output files) are deleted after
``result_retention_s``.

In a fleet (``fleet.Fleet``, on the PostgreSQL store) the index mirrors the whole fleet's jobs, kept
current by the fleet's notifications; runners claim their jobs from the database instead of taking
them from the index, a host's death is handled by the fleet's leases instead of at restart, and every
outcome is written only if this host still owns the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from server.errors import (
    DarkroomError,
    NotFoundError,
    StartTimeoutError,
    WorkerUnavailableError,
    relative_paths,
)
from server.generation.generator import EventSink
from server.generation.live import (
    FINISHED_STATE_TTL_S,
    LiveReporter,
    completed_event,
    fal_log_entry,
    started_within,
)
from server.generation.progress import ProgressHub
from server.media.outputs import OutputStore
from server.queue.fleet import RESYNC_INTERVAL_S, WARM_AFFINITY_S, Fleet
from server.queue.fleet_member import FleetMember, terminal_event
from server.queue.job import CancelResult, Job, QueueFullError, StillRunningError
from server.queue.order import QueueOrder
from server.queue.retention import Retention
from server.queue.store import (
    CANCELLED,
    DEFAULT_USER_ID,
    RESTARTED_TWICE,
    START_TIMEOUT,
    Expected,
    JobRecord,
    JobStatus,
    JobStore,
    Outcome,
    Priority,
    error_outcome,
)
from server.queue.turns import SyncTurns
from server.queue.webhooks import WebhookSender
from server.workflows.mapping import Endpoint
from server.workflows.validation import validation_error

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job running when the facade died is re-run once


class RunsRequests(Protocol):
    """What the queue needs of ``Generator``."""

    async def run(
        self, endpoint: Endpoint, request: BaseModel, *, request_id: str, base_url: str,
        on_event: EventSink | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip


class JobQueue(FleetMember, Retention):
    """Schedules stored jobs onto the workers; see the module docstring."""

    def __init__(
        self, store: JobStore, generator: RunsRequests, hub: ProgressHub, endpoints: Mapping[str, Endpoint],
        *, outputs: OutputStore, concurrency: int = 1, retention_s: float = 3600.0,
        max_queue_length: int = 1000, previews_per_s: float = 2.0, shutdown_grace_s: float = 30.0,
        webhooks: WebhookSender | None = None, clock: Callable[[], float] = time.time,
        fleet: Fleet | None = None, folders: Sequence[Path] = (),
    ) -> None:  # fmt: skip
        self.store, self.generator, self.hub, self.endpoints = store, generator, hub, endpoints
        self.folders = tuple(folders)  # errors name files relative to these (Settings.folders)
        self.outputs = outputs
        self.concurrency = max(1, concurrency)
        self.retention_s = retention_s
        self.max_queue_length = max_queue_length
        self.previews_per_s = previews_per_s
        self.shutdown_grace_s = shutdown_grace_s
        self.webhooks = webhooks
        self.clock = clock
        self.fleet = fleet
        self.order = QueueOrder(hub)
        self._adding: Counter[str] = Counter()  # submits being stored, per app
        # Told of every request that ends (metrics); must not raise or block.
        self.observers: list[Callable[[JobRecord, Outcome], None]] = []
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._abandoned: set[str] = set()  # running here when the fleet fenced this host: no writes
        self._refreshing: set[asyncio.Task[None]] = set()
        self._stale: dict[str, bool] = {}  # jobs being read again: whether they changed meanwhile
        self._wakeup = asyncio.Event()
        self.turns = SyncTurns()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._outputs_swept_at = -math.inf

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the stored jobs (or join the fleet), then start the runners and the sweeper."""
        if self.fleet is None:
            await self._recover()
        else:
            self.hub.listeners.append(self._relay_event)
            await self.fleet.start(self)
            await self._resync()
            await self._time_out_and_expire(self.clock())  # what expired while this host was down
        self._background = [
            *(asyncio.create_task(self._runner(), name=f"queue-runner-{i}") for i in range(self.concurrency)),
            asyncio.create_task(self._sweep_forever(), name="queue-sweeper"),
        ]

    async def stop(self) -> None:
        """Let running jobs finish for ``shutdown_grace_s``; the rest go back to the queue for next time."""
        self._stopping = True
        self._wakeup.set()
        self.turns.close(WorkerUnavailableError("the server is shutting down"))
        running = list(self._tasks.values())
        if running:
            logger.info("waiting up to %g s for %d running request(s)", self.shutdown_grace_s, len(running))
            await asyncio.wait(running, timeout=self.shutdown_grace_s)
        for task in self._tasks.values():
            task.cancel()
        if self._background:
            self._background[-1].cancel()  # the sweeper; the runners end once their job is settled
        await asyncio.gather(*self._background, return_exceptions=True)
        for refresh in self._refreshing:
            refresh.cancel()
        await asyncio.gather(*self._refreshing, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.stop()

    async def _recover(self) -> None:
        now, expired, broken = self.clock(), [], []
        for record in await self.store.index():
            if record.status is JobStatus.COMPLETED:
                if record.expires_at is not None and record.expires_at <= now:
                    expired.append(record.request_id)
                    continue
            elif record.status is JobStatus.IN_PROGRESS and record.attempts >= MAX_ATTEMPTS:
                broken.append(record)
            elif record.status is JobStatus.IN_PROGRESS:
                logger.warning(
                    "request %s was running when the server stopped: running it again", record.request_id
                )
                await self.store.requeue(record.request_id, attempts=record.attempts)
                record.status = JobStatus.IN_QUEUE
            self.order.add(record, waiting=record.status is JobStatus.IN_QUEUE)
        for record in broken:
            logger.error("request %s was running at two server stops: failing it", record.request_id)
            await self._finish(record, RESTARTED_TWICE, expect=Expected(JobStatus.IN_PROGRESS))
        await self._expire(expired)
        self.order.publish_positions()
        if self.order.jobs:
            logger.info(
                "job store: %d request(s) recovered, %d queued", len(self.order.jobs), self.queue_length()
            )

    # -- queries (cheap: memory only) -------------------------------------------------------------

    def get(self, request_id: str) -> JobRecord | None:
        """The job's in-memory record (no outcome body), or None if unknown or expired."""
        return self.order.jobs.get(request_id)

    def job(self, request_id: str) -> Job:
        return Job(request_id, self)

    def position(self, request_id: str) -> int | None:
        """How many queued requests are ahead of this one (0 = next), across priorities."""
        return self.order.position(request_id)

    def queue_length(self, app_id: str | None = None) -> int:
        """Requests waiting to start (for one app, or all)."""
        return self.order.length(app_id)

    async def logs(self, request_id: str) -> list[dict[str, Any]]:
        """The job's log entries in fal's shape (from the hub while live, else from the store)."""
        events = self.hub.logs(request_id)
        if events:
            return [fal_log_entry(e) for e in events]
        record = self.order.jobs.get(request_id)
        return await self.store.logs(request_id) if record and record.status is JobStatus.COMPLETED else []

    async def outcome(self, request_id: str) -> Outcome:
        """The finished job's outcome with its body; 404 unknown/expired, 400 not finished yet."""
        record = await self.find(request_id)
        if record is None:
            raise NotFoundError(f"Request {request_id} not found (unknown, or its result expired)")
        if record.status is not JobStatus.COMPLETED:
            raise StillRunningError("Request is still in progress")
        stored = await self.store.get(request_id)
        if stored is None or stored.outcome is None:
            raise NotFoundError(f"Request {request_id} not found (its result expired)")
        return stored.outcome

    async def ensure_live_state(self, request_id: str) -> bool:
        """Whether the request is known; gives the hub a finished job's terminal event if it has none."""
        if self.hub.known(request_id):
            return True
        record = await self.find(request_id)
        if record is None:
            return False
        if record.status is JobStatus.COMPLETED:
            stored = await self.store.get(request_id)
            if stored is not None and stored.outcome is not None and not self.hub.known(request_id):
                self.hub.publish(request_id, terminal_event(stored.outcome))
        elif record.status is JobStatus.IN_PROGRESS:
            self.hub.publish(request_id, {"type": "started"})
        return True

    # -- commands ---------------------------------------------------------------------------------

    async def submit(
        self, endpoint: Endpoint, input_data: dict[str, Any], *, url_path: str, base_url: str,
        priority: Priority = Priority.NORMAL, timeout_s: float | None = None, webhook_url: str | None = None,
        max_queue_length: int | None = None, user_id: str = DEFAULT_USER_ID,
    ) -> JobRecord:  # fmt: skip
        """Persist a new job and queue it; 429 when the queue or the app's queue is full."""
        if self._stopping:
            raise QueueFullError("The server is shutting down; submit again once it is back")
        # Submits still being stored count too: concurrent ones must not all pass the check at once.
        waiting = self.queue_length() + self._adding.total()
        if waiting >= self.max_queue_length:
            raise QueueFullError(
                f"The queue is full: {waiting} requests waiting, the limit is {self.max_queue_length}"
            )
        mine = self.queue_length(endpoint.app_id) + self._adding[endpoint.app_id]
        if max_queue_length is not None and mine >= max_queue_length:
            raise QueueFullError(
                f"{endpoint.app_id} has {mine} requests waiting; fal_max_queue_length={max_queue_length}"
            )
        now = self.clock()
        record = JobRecord(
            request_id=str(uuid.uuid4()), app_id=endpoint.app_id, url_path=url_path, base_url=base_url,
            input=input_data, priority=priority, submitted_at=now,
            start_deadline=None if timeout_s is None else now + timeout_s, webhook_url=webhook_url,
            user_id=user_id,
            # An editor run uses this host's ComfyUI, where the editor shows its outputs.
            pinned_host=self.fleet.name if self.fleet is not None and endpoint.raw else None,
        )  # fmt: skip
        self._adding[endpoint.app_id] += 1
        try:
            record.seq = await self.store.add(record)
        finally:
            self._adding[endpoint.app_id] -= 1
        self.order.add(record, waiting=True)
        self.order.publish_positions()
        self._wakeup.set()
        return record

    async def cancel(self, request_id: str) -> CancelResult:
        """Remove a queued job or interrupt a running one; either way it ends COMPLETED, cancelled."""
        record = await self.find(request_id)
        if record is None:
            return CancelResult.NOT_FOUND
        if record.status is JobStatus.COMPLETED:
            return CancelResult.ALREADY_COMPLETED
        if self.order.unqueue(record):
            cancelled = await self._finish(record, CANCELLED, expect=Expected(JobStatus.IN_QUEUE))
            if not cancelled and self.fleet is not None:  # another host took it meanwhile
                await self.fleet.request_cancel(request_id)
        elif (task := self._tasks.get(request_id)) is not None:
            # Cancelling the task makes ComfyClient.run delete/interrupt the prompt on its worker.
            task.cancel()
        elif self.fleet is not None:
            await self.fleet.request_cancel(request_id)
        return CancelResult.CANCELLATION_REQUESTED

    def sync_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A sync run's turn among the queue's requests (``turns.py``). In a fleet, whose queue is the
        database's, a sync run takes the next free worker of the host that received it."""
        if self.fleet is not None or self._stopping:
            return contextlib.nullcontext()
        ahead = [r.request_id for r in self.order.pending() if r.priority is Priority.NORMAL]
        return self.turns.turn(ahead, self._wakeup.set)

    # -- running ----------------------------------------------------------------------------------

    async def _runner(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            if self.fleet is None and (turn := self.turns.grant_next(self.order.is_pending)) is not None:
                await turn.done.wait()  # a sync run's turn: this runner's worker is its
                continue
            try:
                record = await self._next_job()
            except Exception:
                logger.exception("queue runner: could not claim a request; trying again in 1 s")
                await asyncio.sleep(1.0)
                continue
            if record is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_wait_s()):
                        await self._wakeup.wait()
                continue
            if self._stopping:  # claimed from the fleet as this host stops: back, attempt not counted
                await self.store.requeue(
                    record.request_id, attempts=record.attempts - 1, owner=record.host_id
                )
                break
            try:
                await self._run(record)
            except Exception:
                logger.exception("queue runner: request %s could not be finished", record.request_id)

    async def _next_job(self) -> JobRecord | None:
        """The next job to run here: from the index alone, or claimed from the fleet's database."""
        if self.fleet is None:
            return self.order.take_next() if self.order.has_pending() else None
        claimed = await self.fleet.claim_next(now=self.clock())
        if claimed is None:
            return None
        record = self._absorb(claimed)
        record.status = JobStatus.IN_QUEUE  # to its clients it waits until its first ComfyUI event
        self.order.dispatch(record)
        return record

    def _idle_wait_s(self) -> float | None:
        """How long an idle runner sleeps unless woken: in a fleet, a job another host may be keeping
        warm is tried again after the affinity window, and everything after the slow fallback."""
        if self.fleet is None:
            return None
        fleet = self.fleet
        if any(fleet.can_run(r.app_id) for r in self.order.pending()):
            return WARM_AFFINITY_S
        return RESYNC_INTERVAL_S

    async def _run(self, record: JobRecord) -> None:
        started = time.perf_counter()
        task = asyncio.create_task(self._execute(record), name=f"job-{record.request_id}")
        self._tasks[record.request_id] = task
        try:
            await asyncio.wait({task})
        finally:
            del self._tasks[record.request_id]
            self.order.left(record.request_id)
        if record.request_id in self._abandoned:
            self._abandoned.discard(record.request_id)  # the fleet runs it again elsewhere
            return
        if task.cancelled() and self._stopping:
            logger.warning(
                "request %s interrupted by shutdown: it runs again at the next start", record.request_id
            )
            await self.store.requeue(
                record.request_id, attempts=max(0, record.attempts - 1), owner=record.host_id
            )
            return
        output = None if task.cancelled() or task.exception() else task.result()
        outcome = self._outcome(record, task, time.perf_counter() - started)
        await self._finish(record, outcome, output, expect=Expected(JobStatus.IN_PROGRESS, record.host_id))

    def _outcome(self, record: JobRecord, task: asyncio.Task[dict[str, Any]], elapsed_s: float) -> Outcome:
        if task.cancelled():
            return CANCELLED
        error = task.exception()
        if error is None:
            return Outcome(200, json.dumps(task.result()), inference_time_s=elapsed_s)
        if isinstance(error, StartTimeoutError):
            return START_TIMEOUT  # as for one that timed out in the queue
        if isinstance(error, DarkroomError):
            detail, message = (
                relative_paths(error.detail, self.folders),
                relative_paths(error.message, self.folders),
            )
            return error_outcome(error.status, detail, message, error.code, **error.headers)
        logger.error("request %s failed", record.request_id, exc_info=error)
        return error_outcome(
            500, "Internal Server Error", f"Internal Server Error: {type(error).__name__}", "internal_error"
        )

    async def _execute(self, record: JobRecord) -> dict[str, Any]:
        if self.fleet is None:  # a fleet's runner claimed it already
            attempts = await self.store.claim(record.request_id, started_at=self.clock())
            record.attempts = attempts if attempts is not None else record.attempts + 1
        endpoint = self.endpoints.get(record.app_id)
        if endpoint is None:
            raise NotFoundError(f"No app {record.app_id!r} on this server any more")
        try:
            request = endpoint.validate(record.input)
        except ValidationError as e:
            raise validation_error(e) from e
        reporter = LiveReporter(
            self.hub, record.request_id, endpoint.workflow, previews_per_s=self.previews_per_s
        )
        left_s = None if record.start_deadline is None else record.start_deadline - self.clock()
        if left_s is not None and left_s <= 0:
            raise StartTimeoutError

        async def on_event(event: Any) -> None:
            if record.status is JobStatus.IN_QUEUE:  # the first event: it runs on a worker now
                self._started(record)
            await reporter(event)

        try:
            return await started_within(
                left_s,
                lambda sink: self.generator.run(
                    endpoint, request, request_id=record.request_id, base_url=record.base_url, on_event=sink
                ),
                on_event,
            )
        finally:
            record.training_steps = reporter.training_steps  # a cancelled run's too: metered

    def _started(self, record: JobRecord) -> None:
        logger.info("%s %s: started on a worker of this host", record.app_id, record.request_id)
        record.status = JobStatus.IN_PROGRESS
        record.started_at = self.clock()
        self.order.left(record.request_id)

    async def _finish(
        self, record: JobRecord, outcome: Outcome, output: Any = None, *, expect: Expected
    ) -> bool:
        """Persist the outcome (and its webhook) if the job is still as ``expect`` says, then update
        the index, then tell subscribers. False (nothing written) if it is not: another host of the
        fleet took or settled it, and the index is refreshed from the store instead."""
        now = self.clock()
        delivery = self.webhooks.delivery(record, outcome) if self.webhooks else None
        write = functools.partial(
            self.store.finish, record.request_id, outcome, finished_at=now, expires_at=now + self.retention_s,
            logs=[fal_log_entry(e) for e in self.hub.logs(record.request_id)], delivery=delivery,
            expect=expect,
        )  # fmt: skip
        stored = False
        try:
            stored = await self._retrying(write)
        finally:
            if stored or self.fleet is None:  # on one host the index must never keep a job unfinished
                self._settle(record, outcome, output, now)
        if not stored:
            logger.warning("request %s: not %s any more, so its outcome here is dropped",
                           record.request_id, expect.status.value)  # fmt: skip
            await self._refresh(record.request_id)
            return False
        if delivery is not None and self.webhooks is not None:
            self.webhooks.notify()
        return True

    async def _retrying(self, write: Callable[[], Awaitable[bool]]) -> bool:
        """One host: the write. A fleet: the job stays this host's while its lease lasts, so a database
        that is away for less than that must not leave the job unfinished: try again until then."""
        if self.fleet is None:
            return await write()
        deadline = time.monotonic() + self.fleet.lease_s
        while True:
            try:
                return await write()
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                logger.warning("job store write failed (%s); trying again in 1 s", e)
                await asyncio.sleep(1.0)

    def unfinished(self, user_id: str) -> int:
        """How many of a user's requests are queued or running (a fleet's: as this host's index has them)."""
        done = JobStatus.COMPLETED
        return sum(1 for r in self.order.jobs.values() if r.user_id == user_id and r.status is not done)

    def _settle(self, record: JobRecord, outcome: Outcome, output: Any, now: float) -> None:
        record.status, record.finished_at = JobStatus.COMPLETED, now
        record.expires_at, record.outcome = now + self.retention_s, outcome.without_body()
        self.order.place(record)
        terminal = completed_event(output) if output is not None else terminal_event(outcome)
        self.hub.publish(record.request_id, terminal)
        for observer in self.observers:
            observer(record, outcome)  # the input still there: metering reads its frames and rate
        record.input = {}
        # The result lives in the store; ensure_live_state rebuilds the hub's state when asked.
        asyncio.get_running_loop().call_later(FINISHED_STATE_TTL_S, self.hub.forget, record.request_id)

"""Usage metering: one ``UsageRow`` per finished request (queued or sync), per key and endpoint, written
to the job store in batches (``FLUSH_EVERY_S``) so a request pays a list append, not a write.

What a row measures (``usage_of``): ``gpu_s`` is the worker time the request took: the output's own
``timings.inference`` where the endpoint reports one (images), else the time from hand-over to the
worker to its answer as the facade measured it. Time a worker sits idle is never counted (it belongs to
no request); time waiting in the queue is ``queue_s``, apart. Megapixels are the output images' pixels;
video seconds the request's ``num_frames / frames_per_second`` for a video output. No request id is
kept: rows are per key and endpoint, the ``/metrics`` families have no request label.

The month's GPU-seconds per key (budgets) are kept here too: read from the store at start and every
``TOTALS_REFRESH_S`` (other hosts' rows included), plus what this host recorded since.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from server.queue.accounts import Accounts, UsageRow
from server.queue.store import JobRecord, Outcome

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
TOTALS_REFRESH_S = 5.0  # a fleet's budgets agree within this (plus a flush)


def month_start(now: float) -> float:
    """The start (unix seconds) of ``now``'s calendar month, UTC."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def usage_of(output: Mapping[str, Any] | None, request_input: Mapping[str, Any]) -> tuple[float, float]:
    """(megapixels, video seconds) of an output, and the input it answered."""
    if not output:
        return 0.0, 0.0
    images = output.get("images") or ([output["image"]] if isinstance(output.get("image"), dict) else [])
    pixels = sum(int(i.get("width") or 0) * int(i.get("height") or 0) for i in images if isinstance(i, dict))
    video_s = 0.0
    frames, fps = request_input.get("num_frames"), request_input.get("frames_per_second")
    if "video" in output and isinstance(frames, (int, float)) and isinstance(fps, (int, float)) and fps > 0:
        video_s = float(frames) / float(fps)
    return pixels / 1e6, video_s


def reported_inference_s(output: Mapping[str, Any] | None) -> float | None:
    timings = output.get("timings") if output else None
    value = timings.get("inference") if isinstance(timings, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


class Meter:
    """Collects usage rows and writes them in batches; knows each key's GPU-seconds this month."""

    def __init__(self, accounts: Accounts, *, device: Callable[[], str] = lambda: "cpu") -> None:
        self.accounts = accounts
        self.device = device
        self._pending: list[UsageRow] = []
        self._stored_totals: dict[str, float] = {}
        self._local_totals: dict[str, float] = {}  # recorded here since the totals were read

    def record(
        self, key_name: str, app_id: str, status: int, *, run_s: float, queue_s: float = 0.0,
        output: Mapping[str, Any] | None = None, request_input: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """One finished request (must not block: the write happens at the next flush)."""
        megapixels, video_s = usage_of(output, request_input or {})
        reported = reported_inference_s(output)
        gpu_s = max(0.0, reported if reported is not None else run_s)
        row = UsageRow(
            time.time(), key_name, app_id, status, gpu_s=gpu_s,
            device=self.device(), queue_s=max(0.0, queue_s), megapixels=megapixels, video_s=video_s,
        )  # fmt: skip
        self._pending.append(row)
        self._local_totals[key_name] = self._local_totals.get(key_name, 0.0) + row.gpu_s

    def record_json(self, key_name: str, app_id: str, status: int, body_json: str, **times: Any) -> None:
        """``record`` for an outcome kept as JSON (a queued request's)."""
        try:
            output = json.loads(body_json) if status == 200 and body_json else None
        except ValueError:
            output = None
        self.record(key_name, app_id, status, output=output if isinstance(output, dict) else None, **times)

    def job_finished(self, record: JobRecord, outcome: Outcome) -> None:
        """A queue observer: a queued request ended."""
        started = record.started_at if record.started_at is not None else record.submitted_at
        self.record_json(
            record.user_id, record.app_id, outcome.status_code, outcome.body_json,
            run_s=outcome.inference_time_s or 0.0, queue_s=started - record.submitted_at,
            request_input=record.input,
        )  # fmt: skip

    def month_gpu_s(self, key_name: str) -> float:
        """The key's metered GPU-seconds this calendar month (all hosts, within ``TOTALS_REFRESH_S``)."""
        return self._stored_totals.get(key_name, 0.0) + self._local_totals.get(key_name, 0.0)

    async def flush(self) -> None:
        rows, self._pending = self._pending, []
        try:
            await self.accounts.record_usage(rows)
        except Exception:
            self._pending[:0] = rows  # the store is away: keep them for the next flush
            raise

    async def read_totals(self) -> None:
        """The month's totals from the store again (what this host flushed is in them now)."""
        await self.flush()
        flushed = dict(self._local_totals)
        self._stored_totals = await self.accounts.gpu_seconds_by_key(month_start(time.time()))
        self._local_totals = {k: v - flushed.get(k, 0.0) for k, v in self._local_totals.items()}

    async def run(self) -> None:
        """Flush every ``FLUSH_EVERY_S`` and read the totals every ``TOTALS_REFRESH_S``, until cancelled
        (then flush what is left)."""
        last_read = -float("inf")
        try:
            while True:
                try:
                    if time.monotonic() - last_read >= TOTALS_REFRESH_S:
                        await self.read_totals()
                        last_read = time.monotonic()
                    else:
                        await self.flush()
                except Exception as e:
                    logger.warning("usage metering could not reach the job store (kept for later): %s", e)
                await asyncio.sleep(FLUSH_EVERY_S)
        finally:
            try:
                await self.flush()
            except Exception as e:
                logger.error("usage rows lost at shutdown (%d): %s", len(self._pending), e)

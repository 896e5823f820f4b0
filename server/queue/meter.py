"""Usage metering: one ``UsageRow`` per finished request (queued or sync), per key and endpoint, written
to the job store in batches (``FLUSH_EVERY_S``) so a request pays a list append, not a write.

What a row measures (``usage_of``): ``gpu_s`` is the worker time the request took: the output's own
``timings.inference`` where the endpoint reports one (images), else the time from hand-over to the
worker to its answer as the facade measured it. Time a worker sits idle is never counted (it belongs to
no request); time waiting in the queue is ``queue_s``, apart. Megapixels are the output images' pixels,
or a video's pixels in all its frames (as fal bills LTX-2); video seconds the output file's own length
(``duration``: the frames the worker wrote over their frame rate, as fal's VideoFile says it), never
what the request asked for; training steps the steps a trainer ran (counted from its live progress:
a cancelled run's too, and both tries of a run a lost worker made start again, since both ran). No
request id is kept: rows are per key and endpoint, the ``/metrics`` families have no request label.

Each row says which of this host's workers ran it (``placed``: the generator knows, by request id) and
its cost, computed here when it is recorded: GPU-seconds times that worker's hourly price
(``server.queue.prices``: by worker, device name, device kind) / 3600. The row keeps it, so a later
price change leaves it be. The month's GPU-seconds and cost per key (the budgets) are kept here too: read
from the store at start and every ``TOTALS_REFRESH_S`` (other hosts' rows, at their prices, included),
plus what this host recorded since.
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
from server.queue.prices import HourlyPrices
from server.queue.store import JobRecord, Outcome

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
TOTALS_REFRESH_S = 5.0  # a fleet's budgets agree within this (plus a flush)


def month_start(now: float) -> float:
    """The start (unix seconds) of ``now``'s calendar month, UTC."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def usage_of(output: Mapping[str, Any] | None) -> tuple[float, float]:
    """(megapixels, video seconds) of an output: its images' pixels, or its video file's pixels in all
    its frames (fal's "megapixel of generated video data") and its ``duration``."""
    if not output:
        return 0.0, 0.0
    images = output.get("images") or ([output["image"]] if isinstance(output.get("image"), dict) else [])
    pixels = sum(_number(i, "width") * _number(i, "height") for i in images if isinstance(i, dict))
    video = output.get("video")
    if not isinstance(video, dict):
        return pixels / 1e6, 0.0
    video_pixels = _number(video, "width") * _number(video, "height") * _number(video, "num_frames")
    return (pixels + video_pixels) / 1e6, _number(video, "duration")


def _number(described: Mapping[str, Any], name: str) -> float:
    value = described.get(name)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def reported_inference_s(output: Mapping[str, Any] | None) -> float | None:
    timings = output.get("timings") if output else None
    value = timings.get("inference") if isinstance(timings, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


# Where a request ran, by its id: (worker id on this host, device kind, device name), or None.
Placed = Callable[[str], tuple[int, str, str] | None]


class Meter:
    """Collects usage rows, each priced when recorded, and writes them in batches; knows each key's
    GPU-seconds and their cost this month."""

    def __init__(
        self, accounts: Accounts, *, device: Callable[[], str] = lambda: "cpu",
        prices: HourlyPrices | None = None, placed: Placed = lambda request_id: None,
    ) -> None:  # fmt: skip
        self.accounts = accounts
        self.device = device  # the host's device kind, for a request no worker took
        self.prices = prices or HourlyPrices()
        self.placed = placed
        self._pending: list[UsageRow] = []
        self._stored_totals: dict[str, tuple[float, float]] = {}  # key -> (GPU-seconds, USD)
        self._local_totals: dict[str, tuple[float, float]] = {}  # recorded here since the totals were read

    def record(
        self, key_name: str, app_id: str, status: int, *, run_s: float, queue_s: float = 0.0,
        output: Mapping[str, Any] | None = None, training_steps: int = 0, request_id: str | None = None,
    ) -> None:  # fmt: skip
        """One finished request (must not block: the write happens at the next flush)."""
        megapixels, video_s = usage_of(output)
        reported = reported_inference_s(output)
        gpu_s = max(0.0, reported if reported is not None else run_s)
        worker, device, name = (request_id and self.placed(request_id)) or (None, self.device(), "")
        usd = self.prices.cost_usd(gpu_s, device, worker, name)
        row = UsageRow(
            time.time(), key_name, app_id, status, gpu_s=gpu_s, device=device, queue_s=max(0.0, queue_s),
            megapixels=megapixels, video_s=video_s, training_steps=training_steps, worker=worker,
            device_name=name, cost_usd=usd,
        )  # fmt: skip
        self._pending.append(row)
        month_s, month_usd = self._local_totals.get(key_name, (0.0, 0.0))
        self._local_totals[key_name] = (month_s + gpu_s, month_usd + usd)

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
            training_steps=record.training_steps, request_id=record.request_id,
        )  # fmt: skip

    def _month(self, key_name: str, index: int) -> float:
        stored, local = self._stored_totals.get(key_name), self._local_totals.get(key_name)
        return (stored[index] if stored else 0.0) + (local[index] if local else 0.0)

    def month_gpu_s(self, key_name: str) -> float:
        """The key's metered GPU-seconds this calendar month (all hosts, within ``TOTALS_REFRESH_S``)."""
        return self._month(key_name, 0)

    def month_usd(self, key_name: str) -> float:
        """What the key's GPU-seconds this month cost (as ``month_gpu_s``): the rows' stored costs, and
        rows written before costs were stored priced by device kind at this host's prices."""
        return self._month(key_name, 1)

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
        totals = await self.accounts.month_totals(month_start(time.time()))
        self._stored_totals = {
            key: (
                sum(t.gpu_s for t in kinds),
                sum(t.stored_usd + self.prices.cost_usd(t.unpriced_gpu_s, t.device) for t in kinds),
            )
            for key, kinds in totals.items()
        }
        self._local_totals = {
            k: (s - flushed.get(k, (0.0, 0.0))[0], usd - flushed.get(k, (0.0, 0.0))[1])
            for k, (s, usd) in self._local_totals.items()
        }

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

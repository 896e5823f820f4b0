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

Cost is GPU-seconds times ``DARKROOM_GPU_HOURLY_USD`` / 3600 (``hourly_prices``: one price, or one per
device kind). The month's GPU-seconds per key and device kind (the budgets, in seconds and in USD) are
kept here too: read from the store at start and every ``TOTALS_REFRESH_S`` (other hosts' rows
included), plus what this host recorded since.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from server.errors import ConfigError
from server.queue.accounts import Accounts, UsageRow
from server.queue.store import JobRecord, Outcome

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
TOTALS_REFRESH_S = 5.0  # a fleet's budgets agree within this (plus a flush)


def month_start(now: float) -> float:
    """The start (unix seconds) of ``now``'s calendar month, UTC."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def hourly_prices(text: str) -> dict[str, float]:
    """``DARKROOM_GPU_HOURLY_USD``: "2.49" (every device kind) or "cuda=2.49,cpu=0" -> kind -> USD/hour
    ("*" for every kind). A ConfigError names what is wrong."""
    prices: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not 0 <= price < float("inf"):
            raise ConfigError(
                f"DARKROOM_GPU_HOURLY_USD: {part!r} is not a price; give '2.49' or 'cuda=2.49,cpu=0'"
            )
        prices[kind.strip() or "*"] = price
    return prices


def cost_usd(gpu_s: float, device: str, prices: Mapping[str, float]) -> float:
    """What ``gpu_s`` seconds on a ``device`` kind cost at ``prices`` (``hourly_prices``)."""
    return gpu_s / 3600.0 * prices.get(device, prices.get("*", 0.0))


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


class Meter:
    """Collects usage rows and writes them in batches; knows each key's GPU-seconds (per device kind)
    and their cost this month."""

    def __init__(
        self, accounts: Accounts, *, device: Callable[[], str] = lambda: "cpu",
        prices: Mapping[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.accounts = accounts
        self.device = device
        self.prices = dict(prices or {})
        self._pending: list[UsageRow] = []
        self._stored_totals: dict[str, dict[str, float]] = {}  # key -> device kind -> GPU-seconds
        self._local_totals: dict[str, dict[str, float]] = {}  # recorded here since the totals were read

    def record(
        self, key_name: str, app_id: str, status: int, *, run_s: float, queue_s: float = 0.0,
        output: Mapping[str, Any] | None = None, training_steps: int = 0,
    ) -> None:  # fmt: skip
        """One finished request (must not block: the write happens at the next flush)."""
        megapixels, video_s = usage_of(output)
        reported = reported_inference_s(output)
        gpu_s = max(0.0, reported if reported is not None else run_s)
        row = UsageRow(
            time.time(), key_name, app_id, status, gpu_s=gpu_s,
            device=self.device(), queue_s=max(0.0, queue_s), megapixels=megapixels, video_s=video_s,
            training_steps=training_steps,
        )  # fmt: skip
        self._pending.append(row)
        devices = self._local_totals.setdefault(key_name, {})
        devices[row.device] = devices.get(row.device, 0.0) + row.gpu_s

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
            training_steps=record.training_steps,
        )  # fmt: skip

    def _month(self, key_name: str) -> dict[str, float]:
        stored, local = self._stored_totals.get(key_name, {}), self._local_totals.get(key_name, {})
        return {d: stored.get(d, 0.0) + local.get(d, 0.0) for d in stored.keys() | local.keys()}

    def month_gpu_s(self, key_name: str) -> float:
        """The key's metered GPU-seconds this calendar month (all hosts, within ``TOTALS_REFRESH_S``)."""
        return sum(self._month(key_name).values())

    def month_usd(self, key_name: str) -> float:
        """What the key's GPU-seconds this month cost at ``prices`` (as ``month_gpu_s``, per device kind)."""
        return sum(cost_usd(s, device, self.prices) for device, s in self._month(key_name).items())

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
        flushed = {k: dict(v) for k, v in self._local_totals.items()}
        self._stored_totals = await self.accounts.gpu_seconds_by_key(month_start(time.time()))
        self._local_totals = {
            k: {d: s - flushed.get(k, {}).get(d, 0.0) for d, s in v.items()}
            for k, v in self._local_totals.items()
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

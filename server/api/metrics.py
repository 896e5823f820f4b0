"""``GET /metrics``: Prometheus' text format, from ``prometheus-client``.

Counted as things happen: ``darkroom_requests_total{endpoint,status}`` (status: the HTTP status the
request ended with), ``darkroom_request_duration_seconds{endpoint,phase}`` (phases ``queue``: submit to
start, ``run``: start to end; sync runs have only ``run``), ``darkroom_webhook_deliveries_total{result}``.
Read at each scrape: ``darkroom_queue_depth{endpoint}``, ``darkroom_worker_up{worker}``,
``darkroom_worker_restarts_total{worker}``, ``darkroom_worker_speed_setting{worker,setting,value}``,
``darkroom_gpu_memory_used_bytes{worker}`` (GPU workers only, from ComfyUI's /system_stats), and the
client library's process metrics. Labels are endpoint ids
and worker numbers, never request ids. The route needs a key unless ``DARKROOM_METRICS_PUBLIC=true``.

darkroom's own families are rendered as they change, so a scrape only joins text: prometheus-client's
generic renderer took ~5 ms of CPU per scrape for a busy server's ~750 samples (scripts/bench_metrics.py);
the library still provides the process and Python metrics and the content type.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from server.api.access import requires
from server.api.described import operation
from server.engine.supervisor import Supervisor
from server.queue.job_queue import JobQueue
from server.queue.store import JobRecord, Outcome
from server.security.roles import Role

# Seconds: from a cached tiny image to a long video on a busy queue.
BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
GPU_STATS_TIMEOUT_S = 1.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def _value(number: float) -> str:
    return repr(float(number)) if number != int(number) else f"{int(number)}.0"


class _Series:
    """One metric family whose samples are rendered when they change, so a scrape only joins text."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.header = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        self.name = name
        self.text: dict[tuple[str, ...], str] = {}

    def render(self) -> str:
        return self.header + "".join(self.text[key] for key in sorted(self.text)) if self.text else ""


class _Counter(_Series):
    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...]) -> None:
        super().__init__(name, "counter", help_text)
        self.label_names = label_names
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str) -> None:
        value = self.values[label_values] = self.values.get(label_values, 0.0) + 1
        labels = _labels(**dict(zip(self.label_names, label_values, strict=True)))
        self.text[label_values] = f"{self.name}_total{{{labels}}} {_value(value)}\n"


class _Histogram(_Series):
    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...]) -> None:
        super().__init__(name, "histogram", help_text)
        self.label_names = label_names
        self.state: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self.bounds = [*(_value(b) for b in BUCKETS_S), "+Inf"]

    def observe(self, value_s: float, *label_values: str) -> None:
        counts, total = self.state.setdefault(label_values, ([0] * (len(BUCKETS_S) + 1), [0.0]))
        counts[bisect.bisect_left(BUCKETS_S, value_s)] += 1
        total[0] += value_s
        labels = _labels(**dict(zip(self.label_names, label_values, strict=True)))
        lines, running = [], 0
        for bound, count in zip(self.bounds, counts, strict=True):
            running += count
            lines.append(f'{self.name}_bucket{{{labels},le="{bound}"}} {_value(running)}\n')
        lines.append(f"{self.name}_sum{{{labels}}} {repr(total[0])}\n")
        lines.append(f"{self.name}_count{{{labels}}} {_value(running)}\n")
        self.text[label_values] = "".join(lines)


class Metrics:
    """What feeds /metrics: counted as requests end, read from the queue and workers at each scrape."""

    def __init__(self, supervisor: Supervisor, queue: JobQueue, endpoint_ids: Iterable[str]) -> None:
        self.supervisor, self.queue, self.endpoint_ids = supervisor, queue, endpoint_ids
        self.requests = _Counter(
            "darkroom_requests", "Requests that ended, by endpoint and HTTP status.", ("endpoint", "status")
        )
        self.duration = _Histogram(
            "darkroom_request_duration_seconds",
            "Time requests spent queued and running.",
            ("endpoint", "phase"),
        )
        self.webhooks = _Counter(
            "darkroom_webhook_deliveries", "Webhook delivery attempts by result.", ("result",)
        )
        self.gpu_memory: dict[str, tuple[float, float]] = {}  # worker -> (used, total) bytes
        self.process = CollectorRegistry()  # the client library's process and Python metrics
        ProcessCollector(registry=self.process)
        PlatformCollector(registry=self.process)

    def job_finished(self, record: JobRecord, outcome: Outcome) -> None:
        """A queued request ended: its status, and its time queued and running."""
        self.requests.inc(record.app_id, str(outcome.status_code))
        started, finished = record.started_at, record.finished_at
        if started is not None:
            self.duration.observe(max(0.0, started - record.submitted_at), record.app_id, "queue")
            if finished is not None:
                self.duration.observe(max(0.0, finished - started), record.app_id, "run")

    def run_finished(self, app_id: str, status: int, run_s: float) -> None:
        """A sync run (POST /run) ended."""
        self.requests.inc(app_id, str(status))
        self.duration.observe(run_s, app_id, "run")

    def webhook_settled(self, result: str) -> None:
        self.webhooks.inc(result)

    async def refresh_gpu_memory(self) -> None:
        """GPU memory in use per GPU worker, from ComfyUI (skipped on CPU workers)."""
        gpu_workers = [w for w in self.supervisor.workers if w.gpu is not None and w.ready]

        async def one(worker: Any) -> None:
            with contextlib.suppress(Exception):  # a busy or restarting worker leaves its last value
                async with asyncio.timeout(GPU_STATS_TIMEOUT_S):
                    stats = await worker.client.system_stats()
                device = stats["devices"][0]
                total = float(device["vram_total"])
                self.gpu_memory[str(worker.id)] = (total - float(device["vram_free"]), total)

        await asyncio.gather(*(one(w) for w in gpu_workers))

    def render(self) -> bytes:
        """The exposition text: counted families (already rendered), live gauges, process metrics."""
        parts = [self.requests.render(), self.duration.render(), self.webhooks.render(), self._live()]
        return "".join(parts).encode() + generate_latest(self.process)

    def _live(self) -> str:
        lines = [
            "# HELP darkroom_queue_depth Requests waiting to start.\n# TYPE darkroom_queue_depth gauge\n",
            *(
                f"darkroom_queue_depth{{{_labels(endpoint=a)}}} {_value(self.queue.queue_length(a))}\n"
                for a in sorted(self.endpoint_ids)
            ),
            "# HELP darkroom_worker_up 1 while the ComfyUI worker answers.\n"
            "# TYPE darkroom_worker_up gauge\n",
            *(
                f'darkroom_worker_up{{worker="{w.id}"}} {1.0 if w.ready else 0.0}\n'
                for w in self.supervisor.workers
            ),
            "# HELP darkroom_worker_restarts_total Times the worker was restarted.\n"
            "# TYPE darkroom_worker_restarts_total counter\n",
            *(
                f'darkroom_worker_restarts_total{{worker="{w.id}"}} {_value(w.restarts)}\n'
                for w in self.supervisor.workers
            ),
            "# HELP darkroom_worker_speed_setting 1 for each speed setting the worker runs with "
            "(torch_compile, fp8_matmul, attention) and its value.\n"
            "# TYPE darkroom_worker_speed_setting gauge\n",
            *(
                f'darkroom_worker_speed_setting{{worker="{w.id}",{_labels(setting=k, value=v)}}} 1\n'
                for w in self.supervisor.workers
                for k, v in sorted(w.speed.shown.items())
            ),
        ]
        if self.gpu_memory:
            lines.append(
                "# HELP darkroom_gpu_memory_used_bytes GPU memory in use on its device.\n"
                "# TYPE darkroom_gpu_memory_used_bytes gauge\n"
            )
            lines += [
                f'darkroom_gpu_memory_used_bytes{{worker="{k}"}} {_value(v)}\n'
                for k, (v, _) in sorted(self.gpu_memory.items())
            ]
        return "".join(lines)


def routes(collected: Metrics) -> list[web.RouteDef]:
    @operation(
        "Prometheus metrics (text format)", ok="text/plain", responses={200: "The metrics"}, tag="health"
    )
    @requires(Role.ADMIN)
    async def metrics(request: web.Request) -> web.Response:
        await collected.refresh_gpu_memory()
        return web.Response(body=collected.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", metrics)]

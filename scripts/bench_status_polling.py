"""Status polling load: 100 clients polling queue status every 100 ms (fal's Python SDK default) while
the queue keeps generating, against a baseline period without them in the same run.

    .venv/bin/python scripts/bench_status_polling.py [--seconds 30] [--block-seconds 5] [--clients 100]

One `darkroom serve --workers 1 --cpu` (throwaway data dir). A feeder keeps --in-flight jobs of
darkroom/demo-flux-2 submitted to POST /queue/... and follows each as the SDK does (status every
100 ms until COMPLETED), the whole run. The run alternates baseline and polling periods of
--block-seconds, B P P B B P P B ..., --seconds of each, so drift (a shared machine) hits both;
while polling, --clients clients each poll the status of one in-flight request, sleeping 100 ms
after each answer, and take another in-flight request once theirs is COMPLETED. Prints status
latency (median, p99; target p99 < 20 ms), images per minute with and without polling (target: no
slowdown beyond the noise, 2 standard errors from the spread of the periods' rates), the CPU
each process used per period, and the facade's CPU per status answer (what pollers cost a server
whose clients are elsewhere). Binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_cold_start import APP_ID
from bench_facade import Darkroom, darkroom_serve, percentile

TARGET_P99_MS = 20.0
POLL_INTERVAL_S = 0.1  # fal_client's default between status calls
PROMPT_TEXT = "a lighthouse"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_LIMIT_S = 300.0
FACADE = "darkroom facade"


@dataclass
class Phase:
    name: str
    started: float
    ended: float | None = None
    completions: list[float] = field(default_factory=list)  # when the feeder saw COMPLETED
    inference_s: list[float] = field(default_factory=list)  # metrics.inference_time of those
    poll_ms: list[float] = field(default_factory=list)  # the 100 clients' status latencies
    feeder_poll_ms: list[float] = field(default_factory=list)  # the feeder's own status latencies
    poll_codes: dict[int, int] = field(default_factory=dict)
    loop_lag_ms: list[float] = field(default_factory=list)  # this process's event-loop delays
    cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    darkroom: Darkroom
    status_query: str
    phases: list[Phase] = field(default_factory=list)
    in_flight: dict[str, str] = field(default_factory=dict)  # request_id -> status_url
    submitted: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def phase(self) -> Phase:
        return self.phases[-1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_now(run: Run) -> dict[str, float]:
    return {
        FACADE: cpu_seconds(run.darkroom.process.pid),
        "ComfyUI worker": cpu_seconds(int(run.darkroom.worker["pid"])),
        "this load generator": time.process_time(),
    }


async def timed_status(session: aiohttp.ClientSession, url: str) -> tuple[float, int, dict[str, Any]]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.json()
        status = response.status
    return (time.perf_counter() - started) * 1000.0, status, body


async def follow(run: Run, session: aiohttp.ClientSession, request_id: str, status_url: str) -> None:
    """The SDK's subscribe(): poll every 100 ms until COMPLETED; record when, and its inference time."""
    while True:
        elapsed_ms, code, body = await timed_status(session, status_url + run.status_query)
        run.phase.feeder_poll_ms.append(elapsed_ms)
        if code == 200 and body.get("status") == "COMPLETED":
            run.phase.completions.append(time.perf_counter())
            if body.get("error"):
                run.failed.append(f"{request_id}: {body.get('error_type')}: {body['error']}")
            inference = (body.get("metrics") or {}).get("inference_time")
            if inference is not None:
                run.phase.inference_s.append(float(inference))
            del run.in_flight[request_id]
            return
        if code not in (200, 202):
            raise RuntimeError(f"status of {request_id} answered {code}: {body}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def feeder(run: Run, in_flight: int, stop: asyncio.Event) -> None:
    """Keep in_flight jobs submitted until stop; each followed by its own SDK-like poller."""
    seed = 0
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while not stop.is_set():
            while len(run.in_flight) < in_flight:
                seed += 1
                body = {"prompt": PROMPT_TEXT, "seed": seed}
                async with session.post(f"{run.darkroom.base_url}/queue/{APP_ID}", json=body) as response:
                    submitted = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"submit answered {response.status}: {submitted}")
                request_id = submitted["request_id"]
                run.in_flight[request_id] = submitted["status_url"]
                run.submitted += 1
                task = asyncio.create_task(follow(run, session, request_id, submitted["status_url"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            done = [t for t in tasks if t.done()]
            for task in done:
                task.result()  # a follower's error stops the run
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
        for status_url in list(run.in_flight.values()):  # end quickly: cancel what is left
            async with session.put(status_url.removesuffix("/status") + "/cancel") as response:
                await response.read()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def poller(run: Run, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """One client: poll one in-flight request's status, 100 ms between answers; on COMPLETED, take
    another in-flight request."""
    await asyncio.sleep(random.uniform(0, POLL_INTERVAL_S))  # spread the clients over the interval
    url = None
    while not stop.is_set():
        if url is None:
            if not run.in_flight:
                await asyncio.sleep(POLL_INTERVAL_S)
                continue
            url = random.choice(list(run.in_flight.values())) + run.status_query
        elapsed_ms, code, body = await timed_status(session, url)
        if stop.is_set():
            break
        run.phase.poll_ms.append(elapsed_ms)
        run.phase.poll_codes[code] = run.phase.poll_codes.get(code, 0) + 1
        if code != 202 or body.get("status") == "COMPLETED":
            url = None
        await asyncio.sleep(POLL_INTERVAL_S)


async def loop_lag(run: Run, stop: asyncio.Event) -> None:
    """How late a 5 ms sleep wakes up in this process: the part of a measured latency that is the
    load generator's own queueing, not the server's."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        run.phase.loop_lag_ms.append((time.perf_counter() - started - 0.005) * 1000.0)


def begin(run: Run, name: str) -> None:
    now = time.perf_counter()
    if run.phases:
        run.phase.ended = now
        run.phase.cpu_s = {k: v - run.phase.cpu_s[k] for k, v in cpu_now(run).items()}
    if name:
        run.phases.append(Phase(name, now, cpu_s=cpu_now(run)))


def plan(seconds: float, block_s: float) -> list[str]:
    """Period kinds, each block_s long: B P P B B P P B ... (ABBA pairs, so drift hits both alike),
    --seconds of polling and as much baseline."""
    blocks = max(1, round(seconds / block_s))
    kinds: list[str] = []
    for i in range(blocks):
        kinds += ["baseline", "polling"] if i % 2 == 0 else ["polling", "baseline"]
    return kinds


async def bench(
    darkroom: Darkroom, seconds: float, block_s: float, clients: int, in_flight: int, logs: bool
) -> Run:
    run = Run(darkroom, "?logs=" + ("true" if logs else "false"))
    run.phases.append(Phase("warm-up", time.perf_counter(), cpu_s=cpu_now(run)))
    stop_feeding = asyncio.Event()
    feeding = asyncio.create_task(feeder(run, in_flight, stop_feeding))
    lagging = asyncio.create_task(loop_lag(run, stop_feeding))
    connector = aiohttp.TCPConnector(limit=0)  # one keep-alive connection per client, as SDKs hold
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        deadline = time.perf_counter() + WARMUP_LIMIT_S
        while not run.phase.completions:  # the first generation loads the models
            await asyncio.sleep(0.1)
            if feeding.done():
                feeding.result()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no job completed within {WARMUP_LIMIT_S:.0f} s")
        kinds = plan(seconds, block_s)
        block = seconds / (len(kinds) // 2)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            stop_polling = asyncio.Event()
            pollers: list[asyncio.Task[None]] = []
            for kind in kinds:
                if kind == "baseline" and pollers:
                    stop_polling.set()
                    await asyncio.gather(*pollers)
                    pollers = []
                begin(run, kind)
                if kind == "polling" and not pollers:
                    stop_polling = asyncio.Event()
                    pollers = [
                        asyncio.create_task(poller(run, session, stop_polling)) for _ in range(clients)
                    ]
                await asyncio.sleep(block)
                if feeding.done():
                    feeding.result()
            stop_polling.set()
            await asyncio.gather(*pollers)
            begin(run, "")
    finally:
        stop_feeding.set()
        await asyncio.gather(feeding, lagging)
    return run


def duration(phase: Phase) -> float:
    return (phase.ended or phase.started) - phase.started


def throughput(phases: list[Phase]) -> tuple[float, float, int]:
    """(images/min, its standard error, images): completions seen in these periods over their length;
    the error from the spread of the periods' own rates (or counting noise, for one period)."""
    images = sum(len(p.completions) for p in phases)
    seconds = sum(duration(p) for p in phases)
    rate = 60.0 * images / seconds
    rates = [60.0 * len(p.completions) / duration(p) for p in phases]
    se = (
        statistics.stdev(rates) / math.sqrt(len(rates))
        if len(rates) > 1
        else 60.0 * math.sqrt(images) / seconds
    )
    return rate, se, images


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def report(run: Run, clients: int) -> None:
    periods = run.phases[1:]
    base = [p for p in periods if p.name == "baseline"]
    polling = [p for p in periods if p.name == "polling"]
    polls = [ms for p in polling for ms in p.poll_ms]
    polled_s = sum(duration(p) for p in polling)
    counts: dict[int, int] = {}
    for p in polling:
        for code, n in p.poll_codes.items():
            counts[code] = counts.get(code, 0) + n
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
    print(f"\nstatus polling: {clients} clients, {len(polls)} requests in {polled_s:.1f} s "
          f"({len(polls) / polled_s:.0f}/s; answers {codes})")  # fmt: skip
    p99 = percentile(polls, 99)
    print(f"  latency median {statistics.median(polls):.2f} ms, p99 {p99:.2f} ms, max {max(polls):.2f} ms")
    lag = [ms for p in polling for ms in p.loop_lag_ms]
    print(f"  this load generator's own event-loop lag: median {statistics.median(lag):.2f} ms, "
          f"p99 {percentile(lag, 99):.2f} ms (part of the latencies above)")  # fmt: skip
    quiet = [ms for p in base for ms in p.feeder_poll_ms]
    if quiet:
        print(f"  without the clients (the feeder's own polls): median {statistics.median(quiet):.2f} ms, "
              f"p99 {percentile(quiet, 99):.2f} ms")  # fmt: skip

    names = list(periods[0].cpu_s)
    print("\nperiods: darkroom/demo-flux-2 on 1 CPU worker, jobs kept in flight; CPU in cores")
    header = f"{'':12}{'length s':>9}{'images':>7}{'img/min':>8}{'job s med':>10}"
    print(header + "".join(f"{name:>21}" for name in names))

    def line(label: str, phases: list[Phase]) -> tuple[float, float]:
        rate, se, images = throughput(phases)
        seconds = sum(duration(p) for p in phases)
        job = median_or_nan([s for p in phases for s in p.inference_s])
        cpu = "".join(f"{sum(p.cpu_s[n] for p in phases) / seconds:21.2f}" for n in names)
        print(f"{label:12}{seconds:9.1f}{images:7d}{rate:8.1f}{job:10.3f}{cpu}")
        return rate, se

    for p in periods:
        line(p.name, [p])
    b, b_se = line("BASELINE", base)
    w, w_se = line("POLLING", polling)
    facade_cores = [sum(p.cpu_s[FACADE] for p in ps) / sum(duration(p) for p in ps) for ps in (base, polling)]
    extra_cores = facade_cores[1] - facade_cores[0]
    per_answer_ms = extra_cores / (len(polls) / polled_s) * 1000
    print(f"\nthe facade's CPU per status answer: {per_answer_ms:.3f} ms ({extra_cores:.2f} cores more "
          "while polling): what these pollers cost the server wherever the clients run")  # fmt: skip
    ratio = w / b if b else math.nan
    noise = 2 * ratio * math.sqrt((b_se / b) ** 2 + (w_se / w) ** 2) if b and w else math.nan
    if run.failed:
        print(f"\nWARNING: {len(run.failed)} job(s) failed, e.g. {run.failed[0]}")

    print(f"\nstatus latency p99 {p99:.2f} ms (target < {TARGET_P99_MS:.0f} ms): "
          f"{'PASS' if p99 < TARGET_P99_MS else 'FAIL'}")  # fmt: skip
    verdict = "PASS" if ratio >= 1.0 - noise else "FAIL"
    print(f"images/min with polling {w:.1f} vs without {b:.1f}: ratio {ratio:.3f}, noise +-{noise:.3f} "
          f"(2 se; target: no slowdown beyond noise): {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="time polling (default 30); baseline as long"
    )
    parser.add_argument("--block-seconds", type=float, default=5.0, help="length of one period (default 5)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent status pollers (default 100)")
    parser.add_argument("--in-flight", type=int, default=2, help="jobs kept submitted (default 2)")
    parser.add_argument("--logs", action="store_true", help="poll with logs=true (SDK default: false)")
    args = parser.parse_args()
    if min(args.seconds, args.block_seconds, args.clients, args.in_flight) <= 0:
        parser.error("--seconds, --block-seconds, --clients and --in-flight must be positive")
    with darkroom_serve() as darkroom:
        print(f"darkroom {darkroom.base_url}; worker pid {darkroom.worker['pid']}")
        run = asyncio.run(
            bench(darkroom, args.seconds, args.block_seconds, args.clients, args.in_flight, args.logs)
        )
    report(run, args.clients)


if __name__ == "__main__":
    main()

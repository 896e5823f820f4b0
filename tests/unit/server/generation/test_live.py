"""ComfyUI events to live hub events: progress mapping, preview shrinking and rate limit, log lines."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from PIL import Image

from server.engine import client as cc
from server.generation.live import LiveReporter, OverallProgress, iso_utc, shrink_preview
from server.generation.progress import ProgressHub

GRAPH: dict[str, Any] = {
    "1": {"class_type": "DarkroomFluxLoader"},
    "3": {"class_type": "KSampler"},
    "7": {"class_type": "KSamplerAdvanced"},
    "9": {"class_type": "VAEDecode"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1771324201.1239) == "2026-02-17T10:30:01.123Z"


def test_overall_fraction_counts_each_sampler_equally_and_never_decreases() -> None:
    overall = OverallProgress(GRAPH)
    assert overall.samplers == {"3", "7"}
    assert overall.step("3", 5, 10) == 0.25
    assert overall.step("9", 1, 1) == 0.25  # a decoder's progress is not sampling
    assert overall.finished(["3"]) == 0.5
    assert overall.step("7", 5, 10) == 0.75
    assert overall.step("7", 2, 10) == 0.75  # a sampler restarting its count does not go back
    assert overall.finished(["7", "9"]) == 1.0


def test_graph_without_known_samplers_counts_nodes_that_report_progress() -> None:
    overall = OverallProgress({"5": {"class_type": "CustomThing"}})
    assert overall.step("5", 1, 4) == 0.25
    assert overall.step("6", 1, 2) == 0.25  # a second progress node appears: clamped, not lowered
    assert overall.finished(["5", "6"]) == 1.0


async def test_reporter_maps_a_run_to_started_progress_and_logs() -> None:
    hub = ProgressHub()
    subscription = hub.subscribe("r")
    reporter = LiveReporter(hub, "r", GRAPH, previews_per_s=2.0, wall_clock=lambda: 0.0)
    for event in [
        cc.Started("r"),
        cc.Cached("r", ("1",)),
        cc.Executing("r", "3"),
        *(cc.Progress("r", "3", step, 4) for step in range(1, 5)),
        cc.Executing("r", "7"),
        cc.Progress("r", "7", 2, 4),
        cc.Evaluations("r", "7", 3, 1, "EasyCache"),
        cc.Evaluations("r", "3", 4, 0, None),
        cc.Executed("r", "9", {}),
        cc.ExecutionError("r", "9", "VAEDecode", "out of memory", "RuntimeError"),
    ]:
        await reporter(event)
    hub.publish("r", {"type": "failed", "status_code": 500, "detail": "x", "error": "x", "error_type": "x"})
    events = [event async for event in subscription]
    assert all(event["request_id"] == "r" for event in events)
    progress = [
        (e["node"], e["class_type"], e["step"], e["total"], e["fraction"])
        for e in events
        if e["type"] == "progress"
    ]
    assert progress == [
        ("3", "KSampler", 1, 4, 0.125),
        ("3", "KSampler", 2, 4, 0.25),
        ("3", "KSampler", 3, 4, 0.375),
        ("3", "KSampler", 4, 4, 0.5),
        ("7", "KSamplerAdvanced", 2, 4, 0.75),
    ]
    logs = [(e["level"], e["message"]) for e in events if e["type"] == "log"]
    assert logs == [
        ("INFO", "Started on a ComfyUI worker"),
        ("INFO", "Reused 1 cached node(s)"),
        ("INFO", "Running node 3 (KSampler)"),
        ("INFO", "Running node 7 (KSamplerAdvanced)"),
        (
            "INFO",
            "node 7 (KSamplerAdvanced) evaluated the diffusion model 3 time(s) and reused 1 result(s) "
            "from the step cache (EasyCache)",
        ),
        (
            "INFO",
            "node 3 (KSampler) evaluated the diffusion model 4 time(s) and reused 0 result(s) "
            "from no step cache (acceleration none)",
        ),
        ("ERROR", "node 9 (VAEDecode) failed: RuntimeError: out of memory"),
    ]
    assert [e["type"] for e in events][0] == "started" and events[-1]["type"] == "failed"
    assert {e["timestamp"] for e in events if e["type"] == "log"} == {"1970-01-01T00:00:00.000Z"}


async def test_previews_are_small_jpegs_at_most_n_per_second() -> None:
    hub, clock = ProgressHub(), Clock()
    subscription = hub.subscribe("r")
    reporter = LiveReporter(hub, "r", GRAPH, previews_per_s=2.0, clock=clock)
    image = png(1024, 512)
    for at in (0.0, 0.1, 0.45, 0.6, 1.05, 1.1):
        clock.now = 100.0 + at
        await reporter(cc.Preview(image, "png", "r", "3"))
    clock.now += 10
    await reporter(cc.Preview(b"not an image", "jpeg", "r", "3"))
    hub.publish("r", {"type": "completed", "status_code": 200, "result": {}})
    previews = [e async for e in subscription if e["type"] == "preview"]
    assert len(previews) == 3  # at 0.0, 0.6 and 1.1 s; the unreadable one is skipped
    for preview in previews:
        decoded = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
        assert decoded.format == "JPEG" and decoded.size == (256, 128) == (
            preview["width"],
            preview["height"],
        )
        assert preview["content_type"] == "image/jpeg" and preview["node"] == "3"


async def test_previews_can_be_turned_off() -> None:
    hub = ProgressHub()
    reporter = LiveReporter(hub, "r", GRAPH, previews_per_s=0)
    await reporter(cc.Preview(png(8, 8), "png", "r", "3"))
    assert hub.snapshot("r") == []


def test_shrink_keeps_small_previews_small() -> None:
    data, width, height = shrink_preview(png(64, 40))
    assert (width, height) == (64, 40) and Image.open(io.BytesIO(data)).format == "JPEG"


async def test_hub_subscription_snapshot_live_and_cancel_safe_next() -> None:
    hub = ProgressHub()
    hub.publish("r", {"type": "queued", "position": 2})
    hub.publish("r", {"type": "queued", "position": 1})
    subscription = hub.subscribe("r")
    assert await anext(subscription) == {"type": "queued", "position": 1, "request_id": "r"}  # state only
    waiting = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    waiting.cancel()  # e.g. a keep-alive timeout: nothing may be lost
    hub.publish("r", {"type": "started"})
    hub.publish("r", {"type": "completed", "status_code": 200, "result": {}})
    assert [e["type"] async for e in subscription] == ["started", "completed"]


def test_hub_forgets_once_the_last_subscriber_leaves() -> None:
    hub = ProgressHub()
    hub.publish("r", {"type": "completed", "status_code": 200, "result": {}})
    subscription = hub.subscribe("r")
    hub.forget("r")
    assert hub.known("r")
    subscription.close()
    assert not hub.known("r") and hub.snapshot("r") == []


async def test_training_progress_has_loss_elapsed_and_eta_and_logs_each_tenth() -> None:
    hub = ProgressHub()
    subscription = hub.subscribe("t")
    clock = Clock()
    graph = {"6": {"class_type": "DarkroomTrainLora"}}
    reporter = LiveReporter(hub, "t", graph, previews_per_s=0, clock=clock, wall_clock=lambda: 0.0)
    for step in range(1, 21):  # 2 s a step; the first report is the start; the loss comes first
        await reporter(cc.Loss("t", "6", step, 20, None if step == 3 else 1.0 / step))
        await reporter(cc.Progress("t", "6", step, 20))
        clock.now += 2.0
    hub.publish("t", {"type": "completed", "status_code": 200, "result": {}})
    events = [event async for event in subscription]
    progress = [(e["step"], e["elapsed_s"], e["eta_s"], e["loss"]) for e in events if e["type"] == "progress"]
    assert progress[0] == (1, 0.0, None, 1.0)
    assert progress[2][3] is None  # a loss that was not finite
    assert progress[5] == (6, 10.0, 28.0, 1.0 / 6)  # 5 steps in 10 s, 14 to go
    assert progress[-1] == (20, 38.0, 0.0, 0.05)
    assert reporter.training_steps == 20
    logs = [e["message"] for e in events if e["type"] == "log"]
    assert logs[0] == "Training: step 1 of 20, loss 1.0000, 0.0 s elapsed"
    assert logs[1] == "Training: step 2 of 20, loss 0.5000, 2.0 s elapsed, ETA 36 s"
    assert logs[-1] == "Training: step 20 of 20, loss 0.0500, 38.0 s elapsed, ETA 0 s"
    assert len(logs) == 11  # the first step, then one line per tenth

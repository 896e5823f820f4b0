"""fal's ``acceleration`` on the demo twins, real ComfyUI on the CPU: for each family, ``high`` evaluates
the diffusion model fewer times than ``none`` and ``regular`` no more than ``none`` (the worker counts
evaluations with a forward hook on a leaf module of the model, ``custom_nodes/darkroom/ops/evaluations.py``,
and reports them in the status logs and, for images, the response's timings); ``none`` gives the bytes of
the graph built without the field; each level gives the same bytes again.

Levels run interleaved (none, high, regular, the graph without the field, high, regular): the worker's
cache holds the last prompt's nodes only, so each repeat really samples again."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.api.state import ENDPOINTS, GENERATOR
from server.engine import client as cc
from server.engine.supervisor import Supervisor

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

OLD_GRAPH = "the graph without the field"
LOGGED = re.compile(r"evaluated the diffusion model (\d+) time\(s\) and reused (\d+) result")
# Each family present, at a tiny size with enough steps for a step cache to have something to skip.
FAMILIES: dict[str, dict[str, Any]] = {
    "darkroom/demo-flux-2": {"num_inference_steps": 5, "image_size": {"width": 32, "height": 32}},
    "darkroom/demo-flux-dev": {"num_inference_steps": 5, "image_size": {"width": 32, "height": 32}},
    "darkroom/demo-wan-2.2-a14b-t2v": {"num_inference_steps": 6, "aspect_ratio": "1:1", "num_frames": 1},
    "darkroom/demo-qwen-image": {"num_inference_steps": 5, "image_size": {"width": 32, "height": 32}},
    "darkroom/demo-z-image-turbo": {"num_inference_steps": 5, "image_size": {"width": 32, "height": 32}},
}


async def run(facade: TestClient, app_id: str, body: dict[str, Any]) -> tuple[bytes, tuple[int, int], Any]:
    """One queued request: its output's bytes, its (evaluated, reused) model calls from the status logs,
    and the response."""
    response = await facade.post(f"/queue/{app_id}", json=body)
    assert response.status == 200, await response.text()
    urls = await response.json()
    async with asyncio.timeout(120):
        while True:
            status = await (await facade.get(_path(urls["status_url"]), params={"logs": "1"})).json()
            if status["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.1)
    logged = [LOGGED.search(entry["message"]) for entry in status["logs"]]
    calls = [(int(m[1]), int(m[2])) for m in logged if m]
    assert calls, f"{app_id}: no evaluation count in the logs: {status['logs']}"
    result = await (await facade.get(_path(urls["response_url"]))).json()
    download = await facade.get(
        _path((result["images"][0] if "images" in result else result["video"])["url"])
    )
    assert download.status == 200
    return await download.read(), (sum(e for e, _ in calls), sum(r for _, r in calls)), result


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.mark.parametrize("app_id", sorted(FAMILIES))
async def test_levels_cut_evaluations_none_is_the_old_graph_and_each_level_repeats(
    facade: TestClient, supervisor: Supervisor, app_id: str
) -> None:
    endpoint = facade.app[ENDPOINTS][app_id]
    body = {"prompt": "a lighthouse at dusk", "seed": 11, **FAMILIES[app_id]}
    steps = body["num_inference_steps"]
    levels = [level for level in endpoint.params["acceleration"].values or [] if level != "none"]
    outputs: dict[str, list[bytes]] = {level: [] for level in ("none", *levels)}
    calls: dict[str, set[tuple[int, int]]] = {level: set() for level in ("none", *levels)}
    # none once through the facade, then the graph built without the field straight on the worker (its
    # second run and the pre-change bytes at once); every other level twice.
    for level in ["none", *levels, OLD_GRAPH, *levels]:
        if level == OLD_GRAPH:
            outputs["none"].append(await run_without_the_field(facade, supervisor, app_id, body))
            continue
        data, counted, result = await run(facade, app_id, {**body, "acceleration": level})
        outputs[level].append(data)
        calls[level].add(counted)
        if "timings" in result:  # image outputs: fal's timings carry the same counts
            timings = result["timings"]
            assert (timings["model_evaluations"], timings["model_evaluations_reused"]) == counted

    assert calls["none"] == {(steps, 0)}, "none: one evaluation per step, nothing reused"
    for level, runs in outputs.items():
        assert len(runs) == 2 and runs[0] == runs[1], f"{level}: the same request gave other bytes"
    for level in levels:
        ((evaluated, reused),) = calls[level]  # the same counts both times
        assert evaluated + reused == steps, calls
    # fal's highest level here (high; regular where fal offers only none and regular) saves evaluations,
    # and regular evaluates no less than high and no more than none.
    top = calls[levels[-1]].copy().pop()[0]
    assert top < steps and outputs[levels[-1]][0] != outputs["none"][0], calls
    assert top <= calls["regular"].copy().pop()[0] <= steps, calls


async def run_without_the_field(
    facade: TestClient, supervisor: Supervisor, app_id: str, body: dict[str, Any]
) -> bytes:
    """The request's graph as built before acceleration existed (the field left out of the endpoint),
    run straight on the worker: the bytes of the file its output node saved."""
    endpoint = facade.app[ENDPOINTS][app_id]
    plain = {name: spec for name, spec in endpoint.params.items() if name != "acceleration"}
    graph, _ = replace(endpoint, params=plain).build_prompt(
        endpoint.validate(body), facade.app[GENERATOR].manifest
    )
    assert not any(node["class_type"].endswith("Cache") for node in graph.values())
    async with supervisor.worker(timeout_s=60) as worker:
        events = [event async for event in worker.client.run(graph, prompt_id=uuid.uuid4().hex)]
        assert isinstance(events[-1], cc.Success), events[-1]
        (saved,) = [e for e in events if isinstance(e, cc.Executed) and e.node == endpoint.output.node]
        entry = saved.output["images"][0]
        return await worker.client.fetch_output(entry["filename"], entry["subfolder"], entry["type"])

"""fal's ``acceleration`` on the demo twins, real ComfyUI on the CPU: for each family, ``high`` evaluates
the diffusion model fewer times than ``none`` and ``regular`` no more than ``none`` (the worker counts
evaluations with a forward hook on a leaf module of the model, ``custom_nodes/darkroom/ops/evaluations.py``,
and reports them in the status logs and, for images, the response's timings); ``none`` gives the bytes of
the graph built without the field; each level gives the same bytes again.

Levels run interleaved (none, high, regular, none, high, regular): the worker's cache holds the last
prompt's nodes only, so each repeat really samples again."""

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

LEVELS = ("none", "high", "regular")
LOGGED = re.compile(r"evaluated the diffusion model (\d+) time\(s\) and reused (\d+) result")
# Each family present, at a tiny size with enough steps for a step cache to have something to skip.
FAMILIES: dict[str, dict[str, Any]] = {
    "darkroom/demo-flux-2": {"num_inference_steps": 8, "image_size": {"width": 32, "height": 32}},
    "darkroom/demo-flux-dev": {"num_inference_steps": 8, "image_size": {"width": 32, "height": 32}},
    "darkroom/demo-wan-2.2-a14b-t2v": {"num_inference_steps": 8, "aspect_ratio": "1:1", "num_frames": 1},
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


async def run_graph(supervisor: Supervisor, graph: dict[str, Any], output_node: str) -> bytes:
    """The graph straight on the worker: the bytes of the file its output node saved."""
    async with supervisor.worker(timeout_s=60) as worker:
        events = [event async for event in worker.client.run(graph, prompt_id=uuid.uuid4().hex)]
        assert isinstance(events[-1], cc.Success), events[-1]
        (saved,) = [e for e in events if isinstance(e, cc.Executed) and e.node == output_node]
        entry = saved.output["images"][0]
        return await worker.client.fetch_output(entry["filename"], entry["subfolder"], entry["type"])


@pytest.mark.parametrize("app_id", sorted(FAMILIES))
async def test_levels_cut_evaluations_none_is_the_old_graph_and_each_level_repeats(
    facade: TestClient, supervisor: Supervisor, app_id: str
) -> None:
    endpoint = facade.app[ENDPOINTS][app_id]
    body = {"prompt": "a lighthouse at dusk", "seed": 11, **FAMILIES[app_id]}
    steps = body["num_inference_steps"]
    outputs: dict[str, list[bytes]] = {level: [] for level in LEVELS}
    calls: dict[str, set[tuple[int, int]]] = {level: set() for level in LEVELS}
    for level in LEVELS * 2:
        if level not in (endpoint.params["acceleration"].values or []):
            continue
        data, counted, result = await run(facade, app_id, {**body, "acceleration": level})
        outputs[level].append(data)
        calls[level].add(counted)
        if "timings" in result:  # image outputs: fal's timings carry the same counts
            timings = result["timings"]
            assert (timings["model_evaluations"], timings["model_evaluations_reused"]) == counted

    ((none, none_reused),) = calls["none"]  # and the same counts both times
    assert (none, none_reused) == (steps, 0), "none: one evaluation per step, nothing reused"
    for level, runs in outputs.items():
        assert len(set(runs)) <= 1, f"{level}: the same request gave other bytes"
    high = calls["high"]
    if high:
        ((evaluated, reused),) = high
        assert evaluated < none and evaluated + reused == steps, calls
        assert outputs["high"][0] != outputs["none"][0]
    ((evaluated, reused),) = calls["regular"]
    assert evaluated + reused == steps, calls
    if high:
        assert next(iter(high))[0] <= evaluated <= none, "regular evaluates between high and none"
    else:  # fal's levels here are none and regular: regular is the one that must save evaluations
        assert evaluated < none, calls
        assert outputs["regular"][0] != outputs["none"][0]

    # none is the graph without the field: built here with it left out, run straight on the worker.
    plain = {name: spec for name, spec in endpoint.params.items() if name != "acceleration"}
    without = replace(endpoint, params=plain, request_model=endpoint.request_model)
    graph, _ = without.build_prompt(endpoint.validate(body), facade.app[GENERATOR].manifest)
    assert await run_graph(supervisor, graph, endpoint.output.node) == outputs["none"][0]

"""/metrics: Prometheus' text format, behind a key unless made public, counting what happened."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from queue_fakes import APP, FakeGenerator, serve

from server.settings import Settings, load_settings

Client = TestClient[web.Request, web.Application]
KEY = "metrics-key"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys=KEY)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with serve(settings, FakeGenerator(settings)) as test_client:
        yield test_client


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text; fails if it is absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    raise AssertionError(f"no sample {name}{{{wanted}}} in:\n{text}")


async def test_needs_a_key_unless_public(client: Client, settings: Settings) -> None:
    assert (await client.get("/metrics")).status == 401
    response = await client.get("/metrics", headers=AUTH)
    assert response.status == 200 and response.content_type == "text/plain"
    async with serve(replace(settings, metrics_public=True), FakeGenerator(settings)) as public:
        assert (await public.get("/metrics")).status == 200


async def test_requests_durations_queue_and_workers(client: Client) -> None:
    ids = []
    for prompt in ("a cube", "fail"):
        response = await client.post(f"/queue/{APP}", json={"prompt": prompt}, headers=AUTH)
        ids.append((await response.json())["request_id"])
    async with asyncio.timeout(10):
        for request_id in ids:
            while (
                await (await client.get(f"/queue/{APP}/requests/{request_id}/status", headers=AUTH)).json()
            )["status"] != "COMPLETED":
                await asyncio.sleep(0.02)
    assert (await client.post(f"/run/{APP}", json={"prompt": "a cube"}, headers=AUTH)).status == 200
    assert (await client.post(f"/run/{APP}", json={"prompt": ""}, headers=AUTH)).status == 422
    text = await (await client.get("/metrics", headers=AUTH)).text()
    assert sample(text, "darkroom_requests_total", endpoint=APP, status="200") == 2  # one queued, one sync
    assert sample(text, "darkroom_requests_total", endpoint=APP, status="500") == 1
    assert sample(text, "darkroom_requests_total", endpoint=APP, status="422") == 1
    assert sample(text, "darkroom_request_duration_seconds_count", endpoint=APP, phase="queue") == 2
    assert sample(text, "darkroom_request_duration_seconds_count", endpoint=APP, phase="run") == 4
    assert sample(text, "darkroom_queue_depth", endpoint=APP) == 0
    assert sample(text, "darkroom_worker_up", worker="0") == 1
    assert sample(text, "darkroom_worker_restarts_total", worker="0") == 0
    assert (
        sample(text, "darkroom_worker_speed_setting", worker="0", setting="attention", value="pytorch") == 1
    )
    assert sample(text, "process_cpu_seconds_total") > 0
    assert "request_id" not in text and "darkroom_gpu_memory_used_bytes" not in text  # CPU workers
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {
        "darkroom_requests": "counter", "darkroom_request_duration_seconds": "histogram",
        "darkroom_queue_depth": "gauge", "darkroom_worker_up": "gauge", "darkroom_worker_restarts": "counter",
        "process_cpu_seconds": "counter",
    }.items() <= families.items(), families  # fmt: skip
    buckets = [
        line for line in text.splitlines() if line.startswith("darkroom_request_duration_seconds_bucket")
    ]
    assert any('le="+Inf"' in line for line in buckets) and all("endpoint=" in line for line in buckets)

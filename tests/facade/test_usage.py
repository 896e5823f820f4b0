"""Usage metering: a known sequence of requests by two keys gives exactly the expected rows (counts,
megapixels; worker seconds within the measured request times), the CSV says what the JSON says, the
cost is GPU-seconds at the configured price, and a key that is not an admin sees only its own."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, FakeSupervisor, serve

from server.api.state import METER
from server.api.usage import FAL_PRICES
from server.app import create_app
from server.errors import ConfigError
from server.queue.meter import usage_of
from server.settings import load_settings
from tests import log_scan

ADMIN = {"Authorization": "Key usage-admin-key"}
Client = TestClient[web.Request, web.Application]
PIXELS_MP = 64 * 64 / 1e6  # the fake generator's one 64 px image


async def new_key(client: Client, name: str) -> dict[str, str]:
    response = await client.post("/keys", json={"name": name, "role": "runner"}, headers=ADMIN)
    secret = (await response.json())["key"]
    log_scan.register(secret)
    return {"Authorization": f"Key {secret}"}


async def timed(client: Client, path: str, headers: dict[str, str], prompt: str) -> float:
    started = time.perf_counter()
    await (await client.post(path, json={"prompt": prompt}, headers=headers)).read()
    return time.perf_counter() - started


async def queued(client: Client, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    submitted = await (await client.post(f"/queue/{APP}", json={"prompt": "q"}, headers=headers)).json()
    status_url = f"/queue/{APP}/requests/{submitted['request_id']}/status"
    async with asyncio.timeout(10):
        while (await (await client.get(status_url, headers=headers)).json())["status"] != "COMPLETED":
            await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def test_two_keys_usage_rows_csv_and_cost(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), api_keys="usage-admin-key", gpu_hourly_usd="cpu=3600,cuda=1"
    )
    async with serve(settings, FakeGenerator(settings)) as client:
        alice, bob = await new_key(client, "alice"), await new_key(client, "bob")
        alice_s = [await timed(client, f"/run/{APP}", alice, "a") for _ in range(2)]
        alice_s.append(await queued(client, alice))
        bob_s = await timed(client, f"/run/{APP}", bob, "fail")  # the fake fails it: a 500
        await client.post(f"/run/{APP}", json={"prompt": 7}, headers=bob)  # a 422: no worker time

        answer = await client.get("/usage?group_by=key,endpoint", headers=ADMIN)
        body = await answer.json()
        assert answer.status == 200 and body["gpu_hourly_usd"] == {"cpu": 3600.0, "cuda": 1.0}
        rows = {row["key"]: row for row in body["rows"]}
        assert set(rows) == {"alice", "bob"} and {r["endpoint"] for r in rows.values()} == {APP}
        a, b = rows["alice"], rows["bob"]
        assert (a["requests"], a["succeeded"], a["failed"]) == (3, 3, 0)
        assert (b["requests"], b["succeeded"], b["failed"]) == (2, 0, 2)
        assert abs(a["megapixels"] - 3 * PIXELS_MP) < 1e-9 and b["megapixels"] == 0
        assert a["video_s"] == 0 and a["training_steps"] == 0
        assert 0 < a["gpu_s"] <= sum(alice_s) and 0 < b["gpu_s"] <= bob_s
        assert abs(a["cost_usd"] - a["gpu_s"]) < 1e-5  # cpu at 3600 USD an hour: a dollar a second

        as_csv = await client.get("/usage?group_by=key,endpoint&format=csv", headers=ADMIN)
        assert as_csv.content_type == "text/csv"
        parsed = list(csv.DictReader(io.StringIO(await as_csv.text())))
        assert [r["key"] for r in parsed] == [r["key"] for r in body["rows"]]
        for from_csv, from_json in zip(parsed, body["rows"], strict=True):
            assert {k: _number(v) for k, v in from_csv.items()} == from_json

        own = await (await client.get("/usage", headers=alice)).json()
        assert [r["key"] for r in own["rows"]] == ["alice"] and own["rows"][0]["requests"] == 3
        assert (await client.get("/usage?key=bob", headers=alice)).status == 403
        by_day = await (await client.get("/usage?group_by=day", headers=ADMIN)).json()
        assert [r["requests"] for r in by_day["rows"]] == [5]
        empty = await (await client.get("/usage?from=2020-01-01&to=2020-02-01", headers=ADMIN)).json()
        assert empty["rows"] == []
        bad = await client.get("/usage?group_by=user", headers=ADMIN)
        assert bad.status == 422 and (await bad.json())["detail"][0]["loc"] == ["query", "group_by"]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


async def test_each_row_keeps_the_price_of_the_worker_that_ran_it(tmp_path: Path) -> None:
    """Two keys' requests on two workers at different prices (worker 1's own entry wins over its
    device's name) cost what each did; restarted with another price, /usage and the monthly_usd
    budget's totals keep the rows' costs, and only new rows take the new price (tests/unit: the rest)."""
    h100 = "NVIDIA H100 80GB HBM3"
    prices = "cpu=0,H100=7200,worker1=3600"  # $2 and $1 a second

    def settings(gpu_hourly_usd: str) -> Any:
        return load_settings(
            {}, data_dir=str(tmp_path), api_keys="usage-admin-key", gpu_hourly_usd=gpu_hourly_usd
        )

    fake = FakeGenerator(settings(prices))
    async with serve(settings(prices), fake) as client:
        alice, bob = await new_key(client, "alice"), await new_key(client, "bob")
        fake.worker = (0, "cuda", h100)
        await timed(client, f"/run/{APP}", alice, "a")
        fake.worker = (1, "cuda", h100)
        await queued(client, bob)
        first = {r["key"]: r for r in (await (await client.get("/usage", headers=ADMIN)).json())["rows"]}
        assert first["alice"]["cost_usd"] == pytest.approx(2 * first["alice"]["gpu_s"], abs=1e-5)
        assert first["bob"]["cost_usd"] == pytest.approx(first["bob"]["gpu_s"], abs=1e-5)
        assert first["alice"]["gpu_s"] > 0 and first["bob"]["gpu_s"] > 0

    fake = FakeGenerator(settings("0"))
    async with serve(settings("0"), fake) as client:  # the operator set every worker's price to 0
        alice = {"Authorization": "Key usage-admin-key"}  # its rows are "default"'s: not alice's
        fake.worker = (0, "cuda", h100)
        await timed(client, f"/run/{APP}", alice, "c")
        body = await (await client.get("/usage", headers=ADMIN)).json()
        later = {r["key"]: r for r in body["rows"]}
        assert body["gpu_hourly_usd"] == {"*": 0.0}
        for key in ("alice", "bob"):
            assert later[key]["cost_usd"] == first[key]["cost_usd"]
        new = set(later) - {"alice", "bob"}
        assert len(new) == 1 and later[new.pop()]["cost_usd"] == 0
        meter = client.app[METER]
        await meter.read_totals()
        for key in ("alice", "bob"):
            assert meter.month_usd(key) == pytest.approx(first[key]["cost_usd"], abs=1e-5)


def test_a_malformed_price_stops_the_server_at_start(tmp_path: Path) -> None:
    """(Every form and mistake: tests/unit/server/queue/test_prices.py.)"""
    settings = load_settings({}, data_dir=str(tmp_path), gpu_hourly_usd="cuda=2.49,worker1=lots")
    with pytest.raises(ConfigError) as refused:
        create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    assert "DARKROOM_GPU_HOURLY_USD: 'worker1=lots' is not a price" in refused.value.message
    assert "cuda=2.49,cpu=0" in refused.value.message


def test_fal_s_price_table_is_dated_sourced_and_names_endpoints_darkroom_serves() -> None:
    """Each price names a unit the page can count, the page it was read from and the day it was seen,
    for an app id a built-in workflow serves; and a video's usage is counted in the units fal bills."""
    served = "\n".join(p.read_text() for p in Path("workflows").glob("*.yaml"))
    for app_id, price in FAL_PRICES.items():
        assert f"  {app_id}:" in served, app_id
        assert price["usd"] > 0 and price["per"] in ("megapixel", "video second"), app_id
        assert price["source"].startswith("https://") and price["quote"], app_id
        date.fromisoformat(price["as_of"])
    video = {"url": "u", "width": 64, "height": 48, "num_frames": 9, "fps": 8.0, "duration": 1.125}
    assert usage_of({"video": video, "seed": 1}) == (64 * 48 * 9 / 1e6, 1.125)
    assert usage_of({"images": [{"width": 64, "height": 64}] * 2}) == (2 * PIXELS_MP, 0.0)

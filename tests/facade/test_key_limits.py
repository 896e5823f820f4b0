"""Per-key limits: requests per minute and at once answer 429 with Retry-After in fal's error shape, a
spent monthly budget (GPU-seconds or USD) 402 naming it; an admin raises each without a restart and the
key works again at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, serve

from server.settings import load_settings
from tests import log_scan

ADMIN = {"Authorization": "Key limits-admin-key"}
Client = TestClient[web.Request, web.Application]


async def limited_key(client: Client, name: str, **limits: Any) -> dict[str, str]:
    response = await client.post("/keys", json={"name": name, **limits}, headers=ADMIN)
    secret = (await response.json())["key"]
    log_scan.register(secret)
    return {"Authorization": f"Key {secret}"}


async def refused(response: ClientResponse, status: int, error_type: str) -> int:
    """The refusal's Retry-After, after checking its status and fal's error shape."""
    body = await response.json()
    assert response.status == status, body
    assert body["error_type"] == response.headers["x-fal-error-type"] == error_type and body["detail"]
    return int(response.headers["Retry-After"])


async def test_rate_and_budget_refuse_then_recover_when_raised(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys="limits-admin-key")
    async with serve(settings, FakeGenerator(settings)) as client:
        key = await limited_key(client, "script", rate_per_min=2)
        for _ in range(2):
            assert (await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key)).status == 200
        third = await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key)
        assert 1 <= await refused(third, 429, "rate_limited") <= 60
        queued = await client.post(f"/queue/{APP}", json={"prompt": "a"}, headers=key)
        await refused(queued, 429, "rate_limited")  # the queue counts against the same rate
        assert (await client.get("/endpoints", headers=key)).status == 200  # reads are not limited

        raised = await client.patch(
            "/keys/script", json={"rate_per_min": 100, "monthly_gpu_s": 0}, headers=ADMIN
        )
        assert raised.status == 200 and (await raised.json())["rate_per_min"] == 100
        over = await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key)
        assert await refused(over, 402, "budget_exceeded") > 0  # seconds to the next month
        await client.patch("/keys/script", json={"rate_per_min": 100, "monthly_usd": 0}, headers=ADMIN)
        over = await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key)
        assert await refused(over, 402, "budget_exceeded") > 0
        assert "cost budget (monthly_usd)" in (await over.json())["detail"]  # it names the budget
        listed = await (await client.get("/keys", headers=ADMIN)).json()
        assert [k["monthly_usd"] for k in listed["keys"] if k["name"] == "script"] == [0]
        await client.patch("/keys/script", json={"rate_per_min": 100, "monthly_usd": 50}, headers=ADMIN)
        assert (await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key)).status == 200


async def test_concurrent_requests_are_limited_until_one_finishes(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys="limits-admin-key")
    fake = FakeGenerator(settings, hold=True)
    async with serve(settings, fake) as client:
        key = await limited_key(client, "one-at-a-time", max_concurrent=1)
        first = await (await client.post(f"/queue/{APP}", json={"prompt": "a"}, headers=key)).json()
        second = await client.post(f"/queue/{APP}", json={"prompt": "b"}, headers=key)
        assert await refused(second, 429, "rate_limited") == 1
        other = await limited_key(client, "someone-else", max_concurrent=1)  # limits are per key
        assert (await client.post(f"/queue/{APP}", json={"prompt": "c"}, headers=other)).status == 200
        await fake.wait_started(first["request_id"])
        fake.release(first["request_id"])
        status_url = f"/queue/{APP}/requests/{first['request_id']}/status"
        async with asyncio.timeout(10):
            while (await (await client.get(status_url, headers=key)).json())["status"] != "COMPLETED":
                await asyncio.sleep(0.02)
        again = await client.post(f"/queue/{APP}", json={"prompt": "d"}, headers=key)
        assert again.status == 200
        for request_id in list(fake._gates) + [(await again.json())["request_id"]]:
            fake.release(request_id)

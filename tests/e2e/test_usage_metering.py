"""Usage metering on the real stack: two keys' tiny generations (sync and queued) give exactly the expected
usage rows (counts, megapixels from the outputs, GPU-seconds the outputs' own inference timings, within
the measured request times; a tiny video's seconds and megapixels from the file the worker wrote, not
from the request; each stored row names the worker that ran it, its device as ComfyUI reports it, and
its cost when written), the CSV says what the JSON says, and the usage page in headless Chromium
shows the table, the plot and the configured price; a runner's session sees only its own usage, and the
usage page's and the playground's navs without the pages its role may not open. Screenshot:
``data/screenshots/usage.png``."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from browser import SCREENSHOTS, chromium_or_skip, open_page
from queue_stack import DEMO, Client, facade

from server.api.state import ACCOUNTS, SUPERVISOR
from server.engine.supervisor import Supervisor
from server.settings import Settings
from tests import log_scan

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

ADMIN_KEY = "usage-e2e-admin-key"
ADMIN = {"Authorization": f"Key {ADMIN_KEY}"}
TINY = {"prompt": "a red cube", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}
VIDEO = "darkroom/demo-wan-2.2-5b-t2v"
# 6 frames asked; Wan's latent holds 1 + 4k frames, so the file has 5: the usage row counts the file.
TINY_VIDEO = {"prompt": "waves", "seed": 1, "num_frames": 6, "frames_per_second": 8, "num_inference_steps": 1}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    chromium_or_skip()
    log_scan.register(ADMIN_KEY)
    data_dir = tmp_path_factory.mktemp("usage")
    async with facade(
        stack_settings, supervisor, data_dir, api_keys=ADMIN_KEY, gpu_hourly_usd="cpu=1.5"
    ) as test_client:
        yield test_client


async def new_key(client: Client, name: str) -> str:
    response = await client.post("/keys", json={"name": name, "role": "runner"}, headers=ADMIN)
    secret: str = (await response.json())["key"]
    log_scan.register(secret)
    return secret


def pixels(output: dict[str, Any]) -> float:
    return sum(i["width"] * i["height"] for i in output["images"]) / 1e6


async def test_usage_rows_csv_and_the_page(client: Client) -> None:
    alice, bob = await new_key(client, "alice"), await new_key(client, "bob")
    outputs, walls = {"alice": [], "bob": []}, {"alice": 0.0, "bob": 0.0}
    for seed in (1, 2):
        started = time.perf_counter()
        run = await client.post(
            f"/run/{DEMO}", json={**TINY, "seed": seed}, headers={"Authorization": f"Key {alice}"}
        )
        assert run.status == 200, await run.text()
        outputs["alice"].append(await run.json())
        walls["alice"] += time.perf_counter() - started
    started = time.perf_counter()
    bob_headers = {"Authorization": f"Key {bob}"}
    submitted = await (
        await client.post(f"/queue/{DEMO}", json={**TINY, "seed": 3}, headers=bob_headers)
    ).json()
    status_url = f"/queue/{DEMO}/requests/{submitted['request_id']}/status"
    async with asyncio.timeout(60):
        while (await (await client.get(status_url, headers=bob_headers)).json())["status"] != "COMPLETED":
            await asyncio.sleep(0.1)
    walls["bob"] = time.perf_counter() - started
    result = await client.get(f"/queue/{DEMO}/requests/{submitted['request_id']}", headers=bob_headers)
    outputs["bob"].append(await result.json())

    video = await client.post(f"/run/{VIDEO}", json=TINY_VIDEO, headers={"Authorization": f"Key {alice}"})
    assert video.status == 200, await video.text()
    described = (await video.json())["video"]
    frames, fps, width, height = await decoded_video(client, described["url"])

    body = await (await client.get("/usage?group_by=key,endpoint", headers=ADMIN)).json()
    rows = {(row["key"], row["endpoint"]): row for row in body["rows"]}
    assert set(rows) == {("alice", DEMO), ("bob", DEMO), ("alice", VIDEO)}
    video_row = rows["alice", VIDEO]
    assert (described["num_frames"], described["fps"]) == (frames, fps)
    assert frames == 5, "Wan wrote 1 + 4k frames: the request's 6 frames would have metered 0.75 s"
    assert video_row["video_s"] == pytest.approx(frames / fps, abs=1e-6) == described["duration"]
    assert video_row["megapixels"] == pytest.approx(width * height * frames / 1e6, abs=1e-6)
    for name, expected in outputs.items():
        row = rows[name, DEMO]
        assert (row["requests"], row["succeeded"], row["failed"]) == (len(expected), len(expected), 0)
        assert row["megapixels"] == pytest.approx(sum(pixels(o) for o in expected), abs=1e-6)
        inference = sum(o["timings"]["inference"] for o in expected)
        assert row["gpu_s"] == pytest.approx(inference, abs=1e-5) and 0 < row["gpu_s"] <= walls[name]
        assert row["cost_usd"] == pytest.approx(row["gpu_s"] * 1.5 / 3600, abs=1e-6)
    # Each stored row names the worker that ran it and its device as the worker's ComfyUI reports it,
    # and keeps the cost it had when written (at that worker's price: cpu here).
    workers = {w.id for w in client.app[SUPERVISOR].workers}
    for stored in await client.app[ACCOUNTS].usage(0.0, time.time() + 1):
        assert stored.worker in workers and (stored.device, stored.device_name) == ("cpu", "cpu")
        assert stored.cost_usd == pytest.approx(stored.gpu_s * 1.5 / 3600, abs=1e-9)
    as_csv = await (await client.get("/usage?group_by=key,endpoint&format=csv", headers=ADMIN)).text()
    parsed = list(csv.DictReader(io.StringIO(as_csv)))
    assert [(r["key"], int(r["requests"]), float(r["gpu_s"])) for r in parsed] == [
        (r["key"], r["requests"], r["gpu_s"]) for r in body["rows"]
    ]

    base = f"http://127.0.0.1:{client.server.port}"
    async with open_page() as page:
        await sign_in(page, base, ADMIN_KEY)
        row = await page.wait_for_selector(f"#endpoints tr[data-endpoint='{DEMO}']")
        assert (await row.inner_text()).split("\t")[1] == "3"
        assert await page.locator(f"#endpoints tr[data-endpoint='{VIDEO}']").count() == 1
        assert await page.locator("#plot svg rect").count() == 1  # one day of usage, one bar
        assert "cpu $1.5/h" in await page.inner_text("#saving")
        assert await page.is_visible("nav a[href='/dashboard']")
        await page.screenshot(path=str(SCREENSHOTS / "usage.png"), full_page=True)
        assert page.problems == [], page.problems
    async with open_page() as page:
        await sign_in(page, base, alice)
        await page.wait_for_selector("#keys tr[data-key='alice']")
        assert await page.locator("#keys tr[data-key]").count() == 1, "a runner sees only its own usage"
        assert not await page.is_visible("nav a[href='/dashboard']")
        assert not await page.is_visible("nav a[href='/editor/']")
        await page.goto(base + "/playground/")  # the playground's nav too, in the same session
        await page.wait_for_selector("nav a[href='/dashboard/usage']")
        assert await page.locator("nav a[href='/dashboard'], nav a[href='/editor/']").count() == 0


async def decoded_video(client: Client, url: str) -> tuple[int, float, int, int]:
    """(frames, frames per second, width, height) of the served file, as PyAV decodes it."""
    import av

    response = await client.get("/" + url.split("://", 1)[1].split("/", 1)[1], headers=ADMIN)
    assert response.status == 200
    with av.open(io.BytesIO(await response.read())) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), stream.codec_context.width, stream.codec_context.height


async def sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(base + "/dashboard/usage")
    assert "/editor/login" in page.url
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/dashboard/usage")

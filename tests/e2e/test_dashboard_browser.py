"""The dashboard in headless Chromium on the real stack: a running and a queued request and the worker
appear live (no reload), Cancel removes the queued one, the failures list shows it, the worker row the
model files ComfyUI keeps loaded. Screenshot:
``data/screenshots/dashboard.png``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from browser import SCREENSHOTS, chromium_or_skip, open_page
from queue_stack import Client, facade, submit, wait_status

from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    chromium_or_skip()
    async with facade(stack_settings, supervisor, tmp_path_factory.mktemp("dashboard")) as test_client:
        yield test_client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(client: Client) -> AsyncIterator[Any]:
    async with open_page() as opened:
        yield opened


async def test_the_dashboard_follows_the_queue_and_cancels(client: Client, page: Any) -> None:
    base = f"http://127.0.0.1:{client.server.port}"
    await page.goto(base + "/dashboard")  # open access: no sign-in
    await page.wait_for_selector("#workers tr[data-worker='0']")
    running = await submit(client, "darkroom/test-pause")  # 2 s on the worker
    waiting = await submit(client, body={"prompt": "waits its turn", "seed": 4})
    await page.wait_for_selector(f"#queue tr[data-request='{running}'] >> text=running", timeout=30_000)
    row = await page.wait_for_selector(f"#queue tr[data-request='{waiting}']")
    assert "waiting" in await row.inner_text() and "darkroom/demo-flux-2" in await row.inner_text()
    assert "busy" in await page.inner_text("#workers tr[data-worker='0']")
    speed = await page.inner_text("#workers tr[data-worker='0'] .speed")  # the worker's speed settings
    assert "attention: pytorch" in speed and "torch_compile: off" in speed and "fp8_matmul: auto" in speed
    assert "darkroom models fetch flux2-vae" in await page.inner_text("#models")
    await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    await page.click(f"#queue tr[data-request='{waiting}'] button")
    await page.wait_for_selector(f"#queue tr[data-request='{waiting}']", state="detached", timeout=15_000)
    cancelled = await wait_status(client, waiting)
    assert cancelled.get("error_type") == "request_cancelled", cancelled
    assert "error" not in await wait_status(client, running), "cancelling one request left the other alone"
    vae = load_manifest().get("tiny-flux2-vae").folder_name  # the models the run left loaded
    await page.wait_for_function(
        "vae => document.querySelector(\"#workers tr[data-worker='0'] .loaded\").innerText.includes(vae)",
        arg=vae, timeout=15_000,
    )  # fmt: skip
    await page.wait_for_selector(f"#failures >> text={waiting[:8]}", timeout=15_000)
    await page.wait_for_selector("#queue .empty", timeout=15_000)
    assert page.problems == [], page.problems

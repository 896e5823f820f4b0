"""Two real CPU workers behind one facade: requests for two demo endpoints, sent one at a time, stick to a
warm worker each (and ComfyUI there has that endpoint's diffusion model loaded); a burst of concurrent
requests runs on both workers. Which worker ran a request is read from the workers' own histories."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from queue_stack import Client, own_supervisor

from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]
log = logging.getLogger(__name__)

FLUX2, FLUX1 = "darkroom/demo-flux-2", "darkroom/demo-flux-dev"
BODY = {"prompt": "a red cube", "image_size": {"width": 32, "height": 32}, "num_inference_steps": 1}
WORKERS = 2


@pytest_asyncio.fixture(loop_scope="session")
async def two_workers(
    stack_settings: Settings, comfyui_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Supervisor, Client]]:
    """A supervisor of its own with two CPU workers, and a facade over it; stopped at the end."""
    data = tmp_path_factory.mktemp("spread")
    async with own_supervisor(stack_settings, comfyui_dir, data, workers=WORKERS) as (supervisor, client):
        yield supervisor, client


async def run_on(supervisor: Supervisor, client: Client, app_id: str) -> int:
    """Run one request through the facade; the id of the worker whose history has it."""
    response = await client.post(f"/run/{app_id}", json=BODY)
    assert response.status == 200, await response.text()
    request_id = response.headers["x-fal-request-id"]
    # The run answers at ComfyUI's execution_success, which comes just before the prompt's history entry.
    for _ in range(50):
        ran = [w.id for w in supervisor.workers if await w.client.history(request_id) is not None]
        if ran:
            break
        await asyncio.sleep(0.05)
    restarts = [w.restarts for w in supervisor.workers]  # a restart empties a worker's history
    assert len(ran) == 1, f"{request_id} is in the history of workers {ran}; restarts per worker {restarts}"
    return ran[0]


async def test_warm_requests_stick_and_a_burst_spreads(two_workers: tuple[Supervisor, Client]) -> None:
    supervisor, client = two_workers
    ran: dict[str, list[int]] = collections.defaultdict(list)
    for app_id in [FLUX2, FLUX1] * 3:  # one at a time: both workers idle at every choice
        ran[app_id].append(await run_on(supervisor, client, app_id))
    log.info("one at a time: %s", dict(ran))
    assert len(set(ran[FLUX2])) == len(set(ran[FLUX1])) == 1, ran  # each stuck to one worker
    assert ran[FLUX2][0] != ran[FLUX1][0], ran  # the second app took the empty worker, evicting nothing
    manifest = load_manifest()
    for app_id, model in [(FLUX2, "tiny-flux2-fp8-scaled"), (FLUX1, "tiny-flux1-fp8-scaled")]:
        loaded = await supervisor.workers[ran[app_id][0]].client.loaded_models()
        assert any(manifest.get(model).folder_name in (m["files"] or ()) for m in loaded), (app_id, loaded)
    assert supervisor.warm_keys() == {
        "tiny-flux2-fp8-scaled+tiny-flux2-vae+tiny-mistral3-flux2",
        "tiny-clip-l+tiny-flux1-ae+tiny-flux1-fp8-scaled+tiny-t5xxl",
    }
    burst = await asyncio.gather(*(run_on(supervisor, client, FLUX2) for _ in range(2 * WORKERS)))
    log.info("burst of %d: %s", 2 * WORKERS, burst)
    assert set(burst) == set(range(WORKERS)), burst  # every worker ran some
    assert supervisor.idle_workers == WORKERS

"""LoRA training on the tiny FLUX.2 model (darkroom/demo-flux-2-trainer, the twin of fal-ai/flux-2-trainer)
on ComfyUI's own training nodes, through the queue: one training run shared by most checks (a module
fixture), then two short ones for determinism and one cancelled."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from PIL import Image, ImageDraw

# Generous limits: training is CPU-bound, and a loaded machine makes each step several times slower.
pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

TRAINER = "darkroom/demo-flux-2-trainer"
SIZE_PX = 32
STEPS = 24
CAPTION = "a red disc on blue"


def training_image(index: int) -> Image.Image:
    """A red disc on blue, shifted a little per image: a look to learn."""
    image = Image.new("RGB", (SIZE_PX, SIZE_PX), (20, 40, 200))
    offset = index * 2
    ImageDraw.Draw(image).ellipse((6 + offset, 6, 22 + offset, 22), fill=(230, 30, 30))
    return image


def training_zip() -> str:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for index in range(4):
            data = io.BytesIO()
            training_image(index).save(data, format="PNG")
            zf.writestr(f"set/img{index}.png", data.getvalue())
            zf.writestr(f"set/img{index}.txt", CAPTION)
    return "data:application/zip;base64," + base64.b64encode(out.getvalue()).decode()


async def download(facade: TestClient, url: str) -> bytes:
    response = await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])
    assert response.status == 200
    return await response.read()


async def submit(facade: TestClient, **body: Any) -> str:
    body = {"image_data_url": training_zip(), "steps": STEPS, "seed": 5, "learning_rate": 0.05, **body}
    response = await facade.post(f"/queue/{TRAINER}", json=body)
    assert response.status == 200, await response.text()
    return str((await response.json())["request_id"])


async def finished(
    facade: TestClient, request_id: str, timeout_s: float = 800
) -> tuple[dict[str, Any], list[str]]:
    """The result and the status logs once the request completed."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await facade.get(
                f"/queue/{TRAINER}/requests/{request_id}/status", params={"logs": "true"}
            )
            status = await response.json()
            if status["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.2)
    assert "error" not in status, status
    result = await facade.get(f"/queue/{TRAINER}/requests/{request_id}")
    assert result.status == 200, await result.text()
    return await result.json(), [entry["message"] for entry in status.get("logs") or []]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def trained(facade: TestClient) -> tuple[dict[str, Any], list[str]]:
    return await finished(facade, await submit(facade))


async def test_training_lowers_the_loss_and_reports_progress(
    facade: TestClient, trained: tuple[dict[str, Any], list[str]]
) -> None:
    result, logs = trained
    assert set(result) == {"diffusers_lora_file", "config_file"}
    config = json.loads(await download(facade, result["config_file"]["url"]))
    assert config["settings"]["steps"] == STEPS and config["settings"]["seed"] == 5
    loss = config["loss"]
    assert len(loss) == STEPS
    quarter = STEPS // 4
    first, last = sum(loss[:quarter]) / quarter, sum(loss[-quarter:]) / quarter
    assert last < 0.8 * first, loss
    training = [line for line in logs if line.startswith("Training: step")]
    assert training[0].startswith("Training: step 1 of 24") and training[-1].startswith(
        "Training: step 24 of 24"
    )
    assert "ETA" in training[-1]


def distance(image: bytes) -> float:
    """Mean absolute pixel distance to the training images (each compared, the nearest counts)."""
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.float64)
    return min(float(np.abs(pixels - np.asarray(training_image(i))).mean()) for i in range(4))


async def generate(facade: TestClient, loras: list[dict[str, Any]]) -> bytes:
    body = {"prompt": CAPTION, "seed": 7, "image_size": {"width": SIZE_PX, "height": SIZE_PX}, "loras": loras}
    response = await facade.post("/run/darkroom/demo-flux-2", json=body)
    assert response.status == 200, await response.text()
    return await download(facade, (await response.json())["images"][0]["url"])


async def test_the_lora_url_serves_at_once_and_moves_the_output_toward_the_training_images(
    facade: TestClient, trained: tuple[dict[str, Any], list[str]]
) -> None:
    lora = trained[0]["diffusers_lora_file"]
    without = await generate(facade, [])
    with_lora = await generate(facade, [{"path": lora["url"], "scale": 1.0}])
    assert distance(with_lora) < distance(without), (distance(with_lora), distance(without))


async def test_same_zip_and_seed_give_the_same_lora_bytes(facade: TestClient) -> None:
    """Two short runs of one zip and seed (the LoRA's two key formats load: the unit tests of lora_keys)."""
    requests = [await submit(facade, steps=2) for _ in range(2)]
    first, second = [await finished(facade, request_id) for request_id in requests]
    lora = [await download(facade, result["diffusers_lora_file"]["url"]) for result, _ in (first, second)]
    assert lora[0] == lora[1] and b"transformer." in lora[0] and b"diffusion_model." not in lora[0]
    assert first[0]["diffusers_lora_file"]["url"] != second[0]["diffusers_lora_file"]["url"]


async def test_cancel_mid_training_frees_the_worker(facade: TestClient) -> None:
    request_id = await submit(facade, steps=64)
    async with asyncio.timeout(600):
        while True:
            response = await facade.get(
                f"/queue/{TRAINER}/requests/{request_id}/status", params={"logs": "true"}
            )
            logs = [entry["message"] for entry in (await response.json()).get("logs") or []]
            if any(line.startswith("Training: step") for line in logs):
                break
            await asyncio.sleep(0.2)
    response = await facade.put(f"/queue/{TRAINER}/requests/{request_id}/cancel")
    assert response.status == 202
    async with asyncio.timeout(30):
        while (await (await facade.get(f"/queue/{TRAINER}/requests/{request_id}/status")).json())[
            "status"
        ] != "COMPLETED":
            await asyncio.sleep(0.2)
    assert (await facade.get(f"/queue/{TRAINER}/requests/{request_id}")).status == 499
    assert await generate(facade, [])  # the worker serves the next request

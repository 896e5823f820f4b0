"""LoRA training on the tiny FLUX.2 model (darkroom/demo-flux-2-trainer, the twin of fal-ai/flux-2-trainer)
on ComfyUI's own training nodes, through the queue: one training run shared by most checks (a module
fixture, submitted over /ws: its live progress with each step's loss, its status logs and its usage
row), then two short ones for determinism, one cancelled, and one refused as too large for the device;
and one short run each on the tiny Z-Image and FLUX.1 trainers (the same graph) whose LoRA changes that
family's generation."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from PIL import Image, ImageDraw
from queue_stack import facade as own_facade

from server.engine.supervisor import Supervisor
from server.settings import Settings

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


def request_body(**body: Any) -> dict[str, Any]:
    """The default run's fields, overridden by ``body`` (a None leaves that field out)."""
    fields = {"image_data_url": training_zip(), "steps": STEPS, "seed": 5, "learning_rate": 0.05, **body}
    return {name: value for name, value in fields.items() if value is not None}


async def submit(facade: TestClient, trainer: str = TRAINER, **body: Any) -> str:
    response = await facade.post(f"/queue/{trainer}", json=request_body(**body))
    assert response.status == 200, await response.text()
    return str((await response.json())["request_id"])


async def finished(
    facade: TestClient, request_id: str, timeout_s: float = 800, trainer: str = TRAINER
) -> tuple[dict[str, Any], list[str]]:
    """The result and the status logs once the request completed."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await facade.get(
                f"/queue/{trainer}/requests/{request_id}/status", params={"logs": "true"}
            )
            status = await response.json()
            if status["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.2)
    assert "error" not in status, status
    result = await facade.get(f"/queue/{trainer}/requests/{request_id}")
    assert result.status == 200, await result.text()
    return await result.json(), [entry["message"] for entry in status.get("logs") or []]


async def metered(facade: TestClient) -> tuple[int, int]:
    """The trainer's requests and training steps in /usage so far."""
    usage = await facade.get("/usage", params={"group_by": "endpoint"})
    assert usage.status == 200, await usage.text()
    rows = [r for r in (await usage.json())["rows"] if r["endpoint"] == TRAINER]
    return (rows[0]["requests"], rows[0]["training_steps"]) if rows else (0, 0)


Trained = tuple[dict[str, Any], list[str], list[dict[str, Any]]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def trained(facade: TestClient) -> Trained:
    """The run's result, its status logs and its /ws events (submitted over /ws, so none is missed)."""
    events: list[dict[str, Any]] = []
    async with facade.ws_connect("/ws") as ws:
        await ws.send_json({"action": "submit", "app_id": TRAINER, "input": request_body(), "ref": 1})
        submitted = await ws.receive_json()
        assert submitted["type"] == "submitted", submitted
        async with asyncio.timeout(800):
            while not events or events[-1]["type"] not in ("completed", "failed"):
                event = await ws.receive_json()
                if event.get("request_id") == submitted["request_id"]:
                    events.append(event)
    return (*await finished(facade, submitted["request_id"]), events)


async def test_training_lowers_the_loss_and_reports_progress(facade: TestClient, trained: Trained) -> None:
    result, logs, events = trained
    assert set(result) == {"diffusers_lora_file", "config_file"}
    config = json.loads(await download(facade, result["config_file"]["url"]))
    assert config["settings"]["steps"] == STEPS and config["settings"]["seed"] == 5
    loss = config["loss"]
    assert len(loss) == STEPS
    quarter = STEPS // 4
    first, last = sum(loss[:quarter]) / quarter, sum(loss[-quarter:]) / quarter
    assert last < 0.8 * first, loss
    training = [line for line in logs if line.startswith("Training: step")]
    assert training[0].startswith("Training: step 1 of 24, loss ") and training[-1].startswith(
        "Training: step 24 of 24, loss "
    )
    assert "ETA" in training[-1]
    # Live: every step's progress event carries its loss (the curve the config file ends with), the
    # time elapsed and, from the second step, the ETA.
    progress = [e for e in events if e["type"] == "progress" and e["class_type"] == "DarkroomTrainLora"]
    assert [(e["step"], e["total"]) for e in progress] == [(n, STEPS) for n in range(1, STEPS + 1)]
    assert all(math.isfinite(e["loss"]) and e["elapsed_s"] >= 0 for e in progress)
    assert [e["loss"] for e in progress] == pytest.approx(loss)
    assert all(e["eta_s"] is not None for e in progress[1:])
    # Metered: the usage row of the finished request counts the steps it trained.
    assert await metered(facade) == (1, STEPS)


def distance(image: bytes) -> float:
    """Mean absolute pixel distance to the training images (each compared, the nearest counts)."""
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.float64)
    return min(float(np.abs(pixels - np.asarray(training_image(i))).mean()) for i in range(4))


async def generate(
    facade: TestClient, loras: list[dict[str, Any]], app: str = "darkroom/demo-flux-2", **extra: Any
) -> bytes:
    body = {"prompt": CAPTION, "seed": 7, "image_size": {"width": SIZE_PX, "height": SIZE_PX}, "loras": loras}
    response = await facade.post(f"/run/{app}", json=body | extra)
    assert response.status == 200, await response.text()
    return await download(facade, (await response.json())["images"][0]["url"])


async def test_the_lora_url_serves_at_once_and_moves_the_output_toward_the_training_images(
    facade: TestClient, trained: Trained
) -> None:
    lora = trained[0]["diffusers_lora_file"]
    without = await generate(facade, [])
    with_lora = await generate(facade, [{"path": lora["url"], "scale": 1.0}])
    assert distance(with_lora) < distance(without), (distance(with_lora), distance(without))


async def test_same_zip_and_seed_give_the_same_lora_bytes(facade: TestClient) -> None:
    """Two short runs of one zip and seed, one queued and one sync (the LoRA's two key formats load: the
    unit tests of lora_keys); each is metered with the steps it trained."""
    before = await metered(facade)
    queued = await finished(facade, await submit(facade, steps=2))
    response = await facade.post(f"/run/{TRAINER}", json=request_body(steps=2))
    assert response.status == 200, await response.text()
    results = [queued[0], await response.json()]
    lora = [await download(facade, result["diffusers_lora_file"]["url"]) for result in results]
    assert lora[0] == lora[1] and b"transformer." in lora[0] and b"diffusion_model." not in lora[0]
    assert results[0]["diffusers_lora_file"]["url"] != results[1]["diffusers_lora_file"]["url"]
    assert await metered(facade) == (before[0] + 2, before[1] + 2 + 2)


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


async def test_a_run_too_large_for_the_device_is_refused_before_it_trains(
    stack_settings: Settings, supervisor: Supervisor, tmp_path: Path
) -> None:
    """DARKROOM_TRAIN_DEVICE_MEMORY_GB lowers the memory the worker's device offers below what the tiny
    model's run needs (the estimate's arithmetic: tests/unit/darkroom/formats/test_train_memory.py)."""
    async with own_facade(stack_settings, supervisor, tmp_path, train_device_memory_gb=1e-4) as small:
        response = await small.post(f"/run/{TRAINER}", json=request_body(steps=2, rank=8))
        body = await response.json()
    assert response.status == 422, body
    message = json.dumps(body)
    assert (
        "does not fit in the worker's CPU's memory as limited by DARKROOM_TRAIN_DEVICE_MEMORY_GB" in message
    )
    assert "at rank 8, batch 1 and" in message and "0.00 GiB are available" in message


@pytest.mark.parametrize(
    ("trainer", "fields", "app"),
    [
        ("darkroom/demo-z-image-trainer", {"default_caption": CAPTION}, "darkroom/demo-z-image-turbo"),
        ("darkroom/demo-flux-lora-fast-training", {"trigger_word": CAPTION}, "darkroom/demo-flux-dev"),
    ],
)
async def test_other_families_train_on_the_same_graph_and_their_loras_change_their_generation(
    facade: TestClient, trainer: str, fields: dict[str, Any], app: str
) -> None:
    """The twins of fal-ai/z-image-trainer (the cheapest family) and fal-ai/flux-lora-fast-training (fal's
    own field names: images_data_url, trigger_word; no learning_rate): 2 steps at 16 px. The LoRA is in
    diffusers names with the bias offsets as PEFT's lora_B.bias, and by its URL it changes that family's
    demo image from the same seed (the Qwen-Image twin, lora_file, was run by hand: 5.8 s)."""
    body = {"steps": 2, "resolution": 16, **fields}
    if "trigger_word" in fields:  # fal's flux-lora-fast-training names its zip images_data_url
        body |= {"images_data_url": training_zip(), "image_data_url": None, "learning_rate": None}
    request_id = await submit(facade, trainer, **body)
    result, _ = await finished(facade, request_id, trainer=trainer)
    assert set(result) == {"diffusers_lora_file", "config_file"}
    lora = result["diffusers_lora_file"]
    data = await download(facade, lora["url"])
    assert b"transformer." in data and b".lora_B.bias" in data and b"diffusion_model." not in data
    without = await generate(facade, [], app, num_inference_steps=1)
    with_lora = await generate(facade, [{"path": lora["url"], "scale": 1.0}], app, num_inference_steps=1)
    delta = np.abs(np.asarray(Image.open(io.BytesIO(with_lora)), dtype=np.float64)
                   - np.asarray(Image.open(io.BytesIO(without)), dtype=np.float64)).mean()  # fmt: skip
    assert delta > 0.5, delta

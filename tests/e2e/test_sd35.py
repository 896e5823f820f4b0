"""Stable Diffusion 3.5 on the tiny MMDiT-X twin (darkroom/demo-sd35, the twin of
fal-ai/stable-diffusion-v35-large and -medium): CLIP-L, CLIP-G and T5-XXL conditioning, real
classifier-free guidance against negative_prompt, LoRAs and the darkroom extensions on the SD3 path."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-sd35"
SIZE = {"width": 64, "height": 48}


async def run(facade: TestClient, **body: Any) -> tuple[tuple[int, int], bytes]:
    request = {"prompt": "a lighthouse at dusk", "seed": 5, "image_size": SIZE, "num_inference_steps": 2}
    response = await facade.post(DEMO, json={**request, **body})
    assert response.status == 200, await response.text()
    (image,) = (await response.json())["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    return (image["width"], image["height"]), await download.read()


async def test_size_determinism_negative_prompt_and_lora(facade: TestClient) -> None:
    size, first = await run(facade)
    assert size == (64, 48)
    assert (await run(facade))[1] == first, "the same request twice gave other bytes"
    negative = (await run(facade, negative_prompt="fog, blur"))[1]
    assert negative != first, "negative_prompt did not change the output: guidance ignores it"
    lora = (await run(facade, loras=[{"path": "tiny/sd35-lora-a.safetensors", "scale": 1.0}]))[1]
    assert lora != first, "a LoRA did not change the output"
    blend = [{"model": "tiny/sd35-bf16.safetensors", "weight": 1.0}]
    extensions = {"sampler": "dpmpp_2m", "scheduler": "sgm_uniform", "shift": 6.0, "model_blend": blend}
    assert (await run(facade, **extensions))[1] != first


async def test_fal_fields_darkroom_cannot_honour_are_422s(facade: TestClient) -> None:
    controlnet = {"path": "x", "control_image_url": "https://example.com/a.png"}
    response = await facade.post(DEMO, json={"prompt": "x", "controlnet": controlnet})
    assert response.status == 422
    (detail,) = (await response.json())["detail"]
    assert detail["loc"][-1] == "controlnet" and "ControlNets are not served" in detail["msg"]
    response = await facade.post(DEMO, json={"prompt": "x", "image_size": {"width": 1024, "height": 64}})
    assert response.status == 422 and "512" in await response.text()


async def test_a_size_preset_runs_on_the_demo(facade: TestClient) -> None:
    # fal's presets reach 1024 px; the tiny model's positions cover them (32 x 32 failed in the sampler,
    # a 500 the fuzz round found). One step: only that the size runs is asked here.
    size, _ = await run(facade, image_size="landscape_16_9", num_inference_steps=1)
    assert size == (1024, 576)

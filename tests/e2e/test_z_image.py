"""Z-Image Turbo on its tiny twin (darkroom/demo-z-image-turbo for fal-ai/z-image/turbo and its LoRA
endpoint; darkroom/demo-z-image-turbo-i2i for fal-ai/z-image/turbo/image-to-image): ComfyUI's own
NextDiT and Qwen3-4B classes at tiny widths, FLUX.1's VAE. Few generations, several checks each."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

T2I, I2I = "/run/darkroom/demo-z-image-turbo", "/run/darkroom/demo-z-image-turbo-i2i"
WIDE = png(96, 64, 4)


async def run(facade: TestClient, app: str, **body: Any) -> tuple[tuple[int, int], bytes]:
    response = await facade.post(app, json={"prompt": "a red fox", "seed": 5, **body})
    assert response.status == 200, await response.text()
    (image,) = (await response.json())["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200 and download.content_type == "image/png"  # fal's default png
    return (image["width"], image["height"]), await download.read()


async def test_text_to_image_size_and_a_lora(facade: TestClient) -> None:
    """(The same request's bytes again: tests/e2e/test_determinism.py, for both twins.)"""
    size = {"width": 80, "height": 48}
    shape, first = await run(facade, T2I, image_size=size, num_inference_steps=2)
    assert shape == (80, 48)
    lora = [{"path": "tiny/zimage-lora-a.safetensors", "scale": 1.0}]
    shape, with_lora = await run(facade, T2I, image_size=size, num_inference_steps=2, loras=lora)
    assert shape == (80, 48) and with_lora != first, "a LoRA on the Z-Image model changed nothing"


async def test_image_to_image_takes_the_inputs_size_and_is_conditioned_by_it(facade: TestClient) -> None:
    shape, first = await run(facade, I2I, image_url=WIDE, num_inference_steps=2)
    assert shape == (96, 64)  # image_size auto: the input's size
    shape, other = await run(facade, I2I, image_url=png(96, 64, 9), num_inference_steps=2)
    assert shape == (96, 64) and other != first, "another input image, same bytes: the input is unused"
    shape, _ = await run(
        facade, I2I, image_url=WIDE, image_size={"width": 48, "height": 80}, num_inference_steps=1
    )
    assert shape == (48, 80)  # an explicit size: the input scaled and cropped to it


async def test_what_darkroom_cannot_serve_is_a_422_naming_the_field(facade: TestClient) -> None:
    for field, value in (("enable_prompt_expansion", True),):
        response = await facade.post(T2I, json={"prompt": "x", field: value})
        assert response.status == 422, await response.text()
        (detail,) = (await response.json())["detail"]
        assert detail["loc"] == ["body", field] and "not served by darkroom" in detail["msg"]
    response = await facade.post(I2I, json={"prompt": "x", "image_url": WIDE, "strength": 0.001})
    assert response.status == 422, await response.text()  # the worker's check: denoise at least 0.01


async def test_a_vae_or_blend_of_another_family_is_a_422(facade: TestClient) -> None:
    """(Every override working on Z-Image, blend and VAE included: tests/e2e/test_determinism.py.)"""
    for field, value, reason in (
        ("vae", "tiny-flux2-vae", "expected a FLUX.1 VAE"),  # Z-Image's is FLUX.1's
        ("model_blend", [{"model": "tiny-flux1-bf16", "weight": 1}], "not a Z-Image diffusion model"),
    ):
        response = await facade.post(T2I, json={"prompt": "x", "seed": 1, field: value})
        assert response.status == 422, await response.text()
        assert reason in (await response.json())["detail"], await response.text()

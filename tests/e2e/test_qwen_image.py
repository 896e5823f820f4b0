"""Qwen-Image on tiny models built from ComfyUI's own classes (the twins of fal-ai/qwen-image,
fal-ai/qwen-image/image-to-image and the Qwen-Image-Edit endpoints): each mode runs to an image of the
right size, a LoRA changes the output, and the edit model's input images (1, 2 and 3, through the vision
tower and as reference latents) and their order change it. Same bytes twice: tests/e2e/test_determinism.py
runs each twin again."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

T2I = "/run/darkroom/demo-qwen-image"
# png() draws fresh noise on each call (PIL's effect_noise): each image is made once and reused.
WIDE, OTHER, TALL = png(80, 48, 4), png(80, 48, 6), png(48, 64, 5)
LORA = {"path": "tiny/qwen-image-lora-a.safetensors", "scale": 1.0}


async def run(facade: TestClient, app: str, **body: Any) -> tuple[tuple[int, int], bytes]:
    response = await facade.post(app, json={"prompt": "a red cat", "seed": 5, **body})
    assert response.status == 200, await response.text()
    (image,) = (await response.json())["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    return (image["width"], image["height"]), await download.read()


async def test_text_to_image_size_and_lora(facade: TestClient) -> None:
    size, first = await run(facade, T2I, image_size={"width": 96, "height": 64}, num_inference_steps=2)
    assert size == (96, 64)
    lora_size, lora = await run(
        facade, T2I, image_size={"width": 96, "height": 64}, num_inference_steps=2, loras=[LORA]
    )
    assert lora_size == size and lora != first, "the LoRA left the output unchanged"


async def test_image_to_image_takes_the_input_size_and_the_input_conditions_it(facade: TestClient) -> None:
    i2i = "/run/darkroom/demo-qwen-image-i2i"
    size, first = await run(facade, i2i, image_url=WIDE, num_inference_steps=2)
    assert size == (80, 48)
    other_size, other = await run(facade, i2i, image_url=OTHER, num_inference_steps=2)
    assert other_size == size and other != first, "another input image, same bytes: the input is unused"


async def test_edit_with_one_two_and_three_images(facade: TestClient) -> None:
    edit = "/run/darkroom/demo-qwen-image-edit"
    steps = {"num_inference_steps": 2}
    size, one = await run(facade, edit, image_urls=[WIDE], **steps)
    assert size == (80, 48), "left out, image_size is the first image's size"
    two_size, two = await run(facade, edit, image_urls=[WIDE, TALL], **steps)
    assert two_size == size and two != one, "a second image, same bytes: it is unused"
    swapped_size, swapped = await run(facade, edit, image_urls=[TALL, WIDE], **steps)
    assert swapped_size == (48, 64) and swapped not in (one, two)
    sized = {"image_size": {"width": 64, "height": 32}}
    three_size, three = await run(facade, edit, image_urls=[WIDE, TALL, OTHER], **steps, **sized)
    assert three_size == (64, 32) and three not in (one, two, swapped)


async def test_edit_refuses_bad_images_and_a_fourth(facade: TestClient) -> None:
    edit = "/run/darkroom/demo-qwen-image-edit"
    text = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    response = await facade.post(edit, json={"prompt": "x", "image_urls": [WIDE, text]})
    assert response.status == 422 and "image_urls" in await response.text()
    response = await facade.post(edit, json={"prompt": "x", "image_urls": [WIDE] * 4})
    assert response.status == 422 and "image_urls" in await response.text()

"""FLUX.1 Kontext [dev] on the tiny FLUX.1 model (darkroom/demo-flux-kontext, the twin of
fal-ai/flux-kontext/dev and fal-ai/flux-kontext-lora): the input image as the reference latent on
Kontext's path, the output at the input's size (resolution_mode match_input)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-flux-kontext"
WIDE, TALL = png(96, 64, 4), png(48, 80, 5)


async def run(facade: TestClient, app: str = DEMO, **body: Any) -> tuple[tuple[int, int], bytes]:
    response = await facade.post(app, json={"prompt": "make it night", "seed": 9, **body})
    assert response.status == 200, await response.text()
    (image,) = (await response.json())["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    return (image["width"], image["height"]), await download.read()


async def test_output_matches_the_input_and_the_input_conditions_it(facade: TestClient) -> None:
    size, first = await run(facade, image_url=WIDE)
    assert size == (96, 64)
    assert (await run(facade, image_url=WIDE))[1] == first
    tall_size, tall = await run(facade, image_url=TALL)
    assert tall_size == (48, 80)
    other_size, other = await run(facade, image_url=png(96, 64, 6))
    assert other_size == size and other != first, "another input image, same bytes: the reference is unused"
    plain_size, plain = await run(
        facade, "/run/darkroom/demo-flux-dev", image_size={"width": 96, "height": 64}, num_inference_steps=4
    )
    assert plain_size == size and plain != first


async def test_bad_input_and_unserved_modes_are_422s(facade: TestClient) -> None:
    text = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    response = await facade.post(DEMO, json={"prompt": "x", "image_url": text})
    assert response.status == 422 and "image_url" in (await response.json())["detail"]
    response = await facade.post(DEMO, json={"prompt": "x", "image_url": WIDE, "resolution_mode": "16:9"})
    assert response.status == 422
    assert "match_input" in (await response.json())["detail"][0]["msg"]

"""fal-ai/esrgan's twin (darkroom/demo-esrgan) on a tiny 4x RRDBNet in Real-ESRGAN's key layout,
loaded by ComfyUI's UpscaleModelLoader (spandrel): fal's {image} answer at exactly `scale` times the
input's size, tiled."""

from __future__ import annotations

import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-esrgan"
INPUT = png(40, 24, 7)


async def upscale(facade: TestClient, **body: Any) -> tuple[dict[str, Any], bytes]:
    response = await facade.post(DEMO, json={"image_url": INPUT, **body})
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    download = await facade.get("/" + result["image"]["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    return result, await download.read()


async def test_the_output_is_scale_times_the_input_as_fals_image(facade: TestClient) -> None:
    for scale, size in ((2, (80, 48)), (4, (160, 96)), (1.5, (60, 36))):
        result, data = await upscale(facade, scale=scale)
        assert set(result) == {"image"}
        image = result["image"]
        assert (image["width"], image["height"]) == size == Image.open(io.BytesIO(data)).size
        assert image["content_type"] == "image/png"


async def test_same_bytes_again_and_tiles_cover_the_image(facade: TestClient) -> None:
    _, whole = await upscale(facade, scale=4)
    _, again = await upscale(facade, scale=4)
    assert whole == again
    # 64 px tiles over a 40 x 24 input at 4x: one tile still; the output is an image, not a blank.
    pixels = Image.open(io.BytesIO(whole)).convert("L").getextrema()
    assert pixels[0] != pixels[1]
    result, jpeg = await upscale(facade, scale=2, output_format="jpeg")
    assert result["image"]["content_type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg)).format == "JPEG"


async def test_tiling_bounds_memory_and_the_seams_stay_close(facade: TestClient) -> None:
    """A 200 x 120 input in 64 px tiles (many tiles, overlapping) against one 512 px tile: the same size,
    nearly the same pixels (tiles see less context at their borders; the overlap blends them)."""
    body = {"image_url": png(200, 120, 8), "scale": 2}
    tiled = await facade.post(DEMO, json={**body, "tile": 64})
    whole = await facade.post(DEMO, json=body)
    assert tiled.status == whole.status == 200
    images = []
    for response in (tiled, whole):
        url = (await response.json())["image"]["url"]
        images.append(
            Image.open(
                io.BytesIO(await (await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])).read())
            )
        )
    assert images[0].size == images[1].size == (400, 240)
    diff = [
        abs(a - b)
        for a, b in zip(images[0].convert("L").getdata(), images[1].convert("L").getdata(), strict=True)
    ]
    assert sum(diff) / len(diff) < 8, "tiled and whole outputs differ by more than seams explain"


@pytest.mark.parametrize(
    ("body", "says"),
    [({"face": True}, "GFPGAN"), ({"model": "RealESRGAN_x2plus"}, "RealESRGAN_x4plus"), ({"scale": 9}, "8")],
)
async def test_what_is_not_served_is_a_422_saying_why(
    facade: TestClient, body: dict[str, Any], says: str
) -> None:
    response = await facade.post(DEMO, json={"image_url": INPUT, **body})
    assert response.status == 422 and says in str((await response.json())["detail"])

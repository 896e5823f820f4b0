"""FLUX.2 [dev] edit on the tiny models (darkroom/demo-flux-2-edit, the twin of fal-ai/flux-2/edit and
fal-ai/flux-2/lora/edit): reference images through the facade's fetch, ReferenceLatent-style
conditioning on the worker, fal's output size rule."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-flux-2-edit"
WIDE, SQUARE, TALL = png(96, 64, 1), png(64, 64, 2), png(48, 80, 3)


async def edit(facade: TestClient, **body: Any) -> tuple[dict[str, Any], bytes]:
    response = await facade.post(DEMO, json={"prompt": "make it blue", "seed": 5, **body})
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    (image,) = result["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    return result, await download.read()


async def test_output_takes_the_first_images_size_unless_image_size_is_given(facade: TestClient) -> None:
    for first, size in ((WIDE, (96, 64)), (TALL, (48, 80))):
        result, data = await edit(facade, image_urls=[first, SQUARE])
        image = result["images"][0]
        assert (image["width"], image["height"]) == size == Image.open(io.BytesIO(data)).size
    result, _ = await edit(facade, image_urls=[WIDE], image_size={"width": 32, "height": 48})
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (32, 48)


async def test_same_request_same_bytes_and_references_and_their_order_change_the_output(
    facade: TestClient,
) -> None:
    size = {"image_size": {"width": 64, "height": 64}}
    _, first = await edit(facade, image_urls=[WIDE, TALL], **size)
    _, again = await edit(facade, image_urls=[WIDE, TALL], **size)
    _, swapped = await edit(facade, image_urls=[TALL, WIDE], **size)
    _, other = await edit(facade, image_urls=[SQUARE, TALL], **size)
    _, one = await edit(facade, image_urls=[WIDE], **size)
    _, lora = await edit(
        facade, image_urls=[WIDE, TALL], loras=[{"path": "tiny/flux2-lora-a.safetensors"}], **size
    )
    assert first == again
    outputs = [first, swapped, other, one, lora]
    assert len(set(outputs)) == len(outputs), "order, another image, one image fewer or a LoRA: same bytes"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64," + base64.b64encode(b"not a png at all").decode(), "image_urls[1]"),
        ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "image_urls[1]"),
        ("http://127.0.0.1:1/a.png", "image_urls[1]"),
    ],
    ids=["not-an-image", "text", "refused-address"],
)
async def test_a_bad_reference_image_is_a_422_naming_the_field(
    facade: TestClient, url: str, says: str
) -> None:
    response = await facade.post(DEMO, json={"prompt": "x", "image_urls": [SQUARE, url]})
    assert response.status == 422, await response.text()
    assert says in (await response.json())["detail"]


async def test_at_most_four_references(facade: TestClient) -> None:
    response = await facade.post(DEMO, json={"prompt": "x", "image_urls": [SQUARE] * 5})
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == ["body", "image_urls"]


async def test_turbo_runs_the_turbo_lora_at_eight_steps(facade: TestClient) -> None:
    """The turbo twins are FLUX.2 [dev] plus a LoRA bound as a model file (a tiny one standing in for
    fal's Turbo LoRA): same seed and size as the plain endpoint, other bytes; the edit takes fal's
    square_hd default, so a size is sent here."""
    body = {"prompt": "a red cube", "seed": 5, "image_size": {"width": 48, "height": 32}}
    results = {}
    for app_id, extra in (
        ("darkroom/demo-flux-2", {"num_inference_steps": 8}),
        ("darkroom/demo-flux-2-turbo", {}),
        ("darkroom/demo-flux-2-turbo-edit", {"image_urls": [WIDE]}),
    ):
        response = await facade.post(f"/run/{app_id}", json={**body, **extra})
        assert response.status == 200, await response.text()
        (image,) = (await response.json())["images"]
        assert (image["width"], image["height"]) == (48, 32)
        download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
        results[app_id] = await download.read()
    assert len(set(results.values())) == 3

"""POST /run/... through the facade to a real ComfyUI worker running the tiny FLUX.2 models."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-flux-2"


async def generate(facade: TestClient, **body: Any) -> dict[str, Any]:
    response = await facade.post(DEMO, json={"prompt": "a red cube on a table", **body})
    assert response.status == 200, await response.text()
    assert response.headers["x-fal-request-id"]
    result: dict[str, Any] = await response.json()
    return result


async def fetch(facade: TestClient, url: str) -> tuple[bytes, str]:
    path = url.split("://", 1)[1].split("/", 1)[1]
    response = await facade.get("/" + path)
    assert response.status == 200
    return await response.read(), response.headers["Content-Type"]


async def test_round_trip_returns_fal_shape_and_a_served_png(facade: TestClient) -> None:
    result = await generate(facade, seed=7, image_size={"width": 64, "height": 48})
    assert set(result) == {"images", "seed", "timings", "prompt", "has_nsfw_concepts"}
    assert result["seed"] == 7 and result["prompt"] == "a red cube on a table"
    assert result["has_nsfw_concepts"] == [False] and result["timings"]["inference"] > 0
    (image,) = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (64, 48, "image/png")
    data, content_type = await fetch(facade, image["url"])
    assert content_type == "image/png" and len(data) == image["file_size"]
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (64, 48) and decoded.format == "PNG"
    pixels = decoded.convert("L").getextrema()
    assert pixels[0] != pixels[1], "a flat image means the model produced nothing"


async def test_same_seed_same_bytes_other_seed_other_bytes(facade: TestClient) -> None:
    first = await fetch(facade, (await generate(facade, seed=11))["images"][0]["url"])
    again = await fetch(facade, (await generate(facade, seed=11))["images"][0]["url"])
    other = await fetch(facade, (await generate(facade, seed=12))["images"][0]["url"])
    assert first[0] == again[0]
    assert first[0] != other[0]


async def test_random_seed_is_reported_and_reproduces(facade: TestClient) -> None:
    result = await generate(facade)
    assert isinstance(result["seed"], int)
    replay = await generate(facade, seed=result["seed"])
    original = await fetch(facade, result["images"][0]["url"])
    assert (await fetch(facade, replay["images"][0]["url"]))[0] == original[0]


async def test_num_images_batches_distinct_images(facade: TestClient) -> None:
    result = await generate(facade, seed=3, num_images=2)
    assert len(result["images"]) == 2 and result["has_nsfw_concepts"] == [False, False]
    first, second = [(await fetch(facade, image["url"]))[0] for image in result["images"]]
    assert first != second


@pytest.mark.parametrize(
    ("fmt", "mime", "pil_format"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
async def test_output_formats(facade: TestClient, fmt: str, mime: str, pil_format: str) -> None:
    (image,) = (await generate(facade, seed=5, output_format=fmt))["images"]
    data, content_type = await fetch(facade, image["url"])
    assert image["content_type"] == content_type == mime
    assert Image.open(io.BytesIO(data)).format == pil_format


async def test_sync_mode_returns_a_data_uri(facade: TestClient) -> None:
    (image,) = (await generate(facade, seed=5, sync_mode=True))["images"]
    header, _, payload = image["url"].partition(",")
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(payload))).size == (64, 64)


async def test_bad_input_is_a_422_naming_field_and_range(facade: TestClient) -> None:
    response = await facade.post(DEMO, json={"prompt": "x", "num_inference_steps": 500})
    assert response.status == 422
    body = await response.json()
    (item,) = body["detail"]
    assert item["loc"] == ["body", "num_inference_steps"] and item["ctx"] == {"le": 12}
    assert "a CPU demo" in item["msg"], item
    assert response.headers["x-fal-request-id"]


async def test_malformed_json_is_a_422(facade: TestClient) -> None:
    response = await facade.post(DEMO, data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 422
    assert (await response.json())["detail"][0]["type"] == "json_invalid"


async def test_real_endpoint_without_weights_is_503_naming_files_and_command(facade: TestClient) -> None:
    response = await facade.post("/run/fal-ai/flux-2", json={"prompt": "x"})
    assert response.status == 503
    detail = (await response.json())["detail"]
    assert "flux2_dev_fp8mixed.safetensors" in detail and "flux2-vae.safetensors" in detail
    assert "darkroom models fetch fal-ai/flux-2" in detail


async def test_unknown_app_is_404_listing_the_available(facade: TestClient) -> None:
    response = await facade.post("/run/fal-ai/nope", json={"prompt": "x"})
    assert response.status == 404
    assert "darkroom/demo-flux-2" in (await response.json())["detail"]


@pytest.mark.parametrize("app_id", ["darkroom/demo-flux-dev", "darkroom/demo-flux-schnell"])
async def test_flux1_demo_endpoints_generate(facade: TestClient, app_id: str) -> None:
    body = {"prompt": "a blue vase", "seed": 1, "image_size": {"width": 48, "height": 32}}
    response = await facade.post(f"/run/{app_id}", json=body)
    assert response.status == 200, await response.text()
    (image,) = (await response.json())["images"]
    data, content_type = await fetch(facade, image["url"])
    assert content_type == "image/jpeg"  # fal's FLUX.1 default output format
    assert Image.open(io.BytesIO(data)).size == (48, 32)


@pytest.mark.parametrize(
    ("app_id", "frames"), [("darkroom/demo-wan-2.2-5b-t2v", 5), ("darkroom/demo-wan-2.2-a14b-t2v", 9)]
)
async def test_wan_demo_endpoints_answer_an_mp4_file(facade: TestClient, app_id: str, frames: int) -> None:
    import av

    body = {
        "prompt": "waves",
        "seed": 2,
        "num_frames": frames,
        "frames_per_second": 8,
        "aspect_ratio": "9:16",
    }
    response = await facade.post(f"/run/{app_id}", json=body)
    assert response.status == 200, await response.text()
    result = await response.json()
    assert set(result) == {"video", "seed", "prompt"} and result["seed"] == 2
    assert result["video"]["content_type"] == "video/mp4"
    data, content_type = await fetch(facade, result["video"]["url"])
    assert content_type == "video/mp4" and len(data) == result["video"]["file_size"]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 96)
        assert len(decoded) == frames and stream.average_rate == 8


def png_data_uri(width: int, height: int) -> str:
    image = Image.new("RGB", (width, height), (200, 40, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("app_id", ["darkroom/demo-wan-2.2-5b-i2v", "darkroom/demo-wan-2.2-a14b-i2v"])
async def test_image_to_video_takes_a_start_image_and_picks_the_aspect_ratio(
    facade: TestClient, app_id: str
) -> None:
    import av

    body = {"prompt": "the cube spins", "seed": 4, "num_frames": 5, "image_url": png_data_uri(60, 100)}
    response = await facade.post(f"/run/{app_id}", json=body)
    assert response.status == 200, await response.text()
    data, _ = await fetch(facade, (await response.json())["video"]["url"])
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 96)  # "auto" -> 9:16


async def test_image_url_on_a_private_address_is_refused(facade: TestClient) -> None:
    body = {"prompt": "x", "image_url": "https://127.0.0.1:9/cat.png"}
    response = await facade.post("/run/darkroom/demo-wan-2.2-5b-i2v", json=body)
    assert response.status == 422, await response.text()
    assert "127.0.0.1" in (await response.json())["detail"]

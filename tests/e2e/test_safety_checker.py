"""enable_safety_checker through the real graph on the FLUX.2 demo twin (tiny models, real ComfyUI).

How a generation becomes the image the classifier flags: the demo twin checks with the tiny classifier
(custom_nodes/darkroom/tiny/safety.py), whose constructed weights flag an image whose mean colour is
near magenta; the request names the tiny FLUX.2 VAE whose last convolution was zeroed and given the
bias (1, -1, 1) as its `vae`, so whatever the sampler made decodes to magenta. The same request with
the demo's own VAE gives a tiny model's picture, which the classifier checks and passes."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from server.api.state import ENDPOINTS
from server.workflows.safety import CHECKER_NODE

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "darkroom/demo-flux-2"
BODY = {
    "prompt": "a lighthouse",
    "seed": 5,
    "num_inference_steps": 1,
    "image_size": {"width": 64, "height": 64},
}
MAGENTA_VAE = {"vae": "tiny-flux2-vae-magenta"}


async def run_queued(
    facade: TestClient, app_id: str, **body: Any
) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Run through the queue: (result, the image's pixels, the status logs)."""
    response = await facade.post(f"/queue/{app_id}", json={**BODY, **body})
    assert response.status == 200, await response.text()
    request_id = (await response.json())["request_id"]
    status_url = f"/queue/{app_id}/requests/{request_id}/status"
    async with asyncio.timeout(120):
        while (status := await (await facade.get(status_url, params={"logs": "true"})).json())[
            "status"
        ] != "COMPLETED":
            await asyncio.sleep(0.1)
    result = await (await facade.get(f"/queue/{app_id}/requests/{request_id}")).json()
    (image,) = result["images"]
    download = await facade.get("/" + image["url"].split("://", 1)[1].split("/", 1)[1])
    assert download.status == 200
    pixels = np.asarray(Image.open(io.BytesIO(await download.read())).convert("RGB"))
    return result, pixels, [entry["message"] for entry in status["logs"]]


async def test_a_flagged_output_is_black_and_says_so(facade: TestClient) -> None:
    result, pixels, logs = await run_queued(facade, DEMO, **MAGENTA_VAE)
    assert result["has_nsfw_concepts"] == [True]
    assert pixels.shape == (64, 64, 3) and not pixels.any(), "a flagged image is black, at its own size"
    assert any("1 of 1 image(s) flagged and replaced by black" in line for line in logs), logs
    assert f"Running node {CHECKER_NODE}" in logs, logs


async def test_off_nothing_runs_and_the_answer_is_null(facade: TestClient) -> None:
    result, pixels, logs = await run_queued(facade, DEMO, enable_safety_checker=False, **MAGENTA_VAE)
    assert result["has_nsfw_concepts"] == [None]
    assert (pixels == [255, 0, 255]).all(), "the magenta image itself: no checker replaced it"
    assert not any(CHECKER_NODE in line for line in logs), logs
    assert any("enable_safety_checker is false: no safety checker ran" in line for line in logs), logs


async def test_an_ordinary_output_is_checked_and_passes(facade: TestClient) -> None:
    result, pixels, logs = await run_queued(facade, DEMO)
    assert result["has_nsfw_concepts"] == [False]
    assert pixels.any() and not (pixels == [255, 0, 255]).all(axis=-1).all()
    assert any("0 of 1 image(s) flagged" in line for line in logs), logs


async def test_absent_weights_are_a_null_and_a_warning_never_a_false(facade: TestClient) -> None:
    """The demo twin bound to the real classifier, whose weights a test data dir never holds."""
    endpoints = facade.server.app[ENDPOINTS]
    demo = endpoints[DEMO]
    spec = demo.params["enable_safety_checker"].model_copy(update={"checker": "nsfw-image-detection"})
    endpoints["darkroom/test-unchecked"] = replace(
        demo, app_id="darkroom/test-unchecked", params={**demo.params, "enable_safety_checker": spec}
    )
    try:
        result, pixels, logs = await run_queued(facade, "darkroom/test-unchecked", **MAGENTA_VAE)
    finally:
        del endpoints["darkroom/test-unchecked"]
    assert result["has_nsfw_concepts"] == [None]
    assert (pixels == [255, 0, 255]).all()
    assert any("falconsai-nsfw-image-detection.safetensors) are absent" in line for line in logs), logs


async def test_a_video_is_checked_on_its_frames_only_when_asked(facade: TestClient) -> None:
    """Wan's enable_output_safety_checker (off by default, as on fal): on, the tiny classifier checks
    sampled frames of the tiny model's video and passes it; the answer says so beyond fal's schema."""
    body = {"prompt": "a wave", "seed": 3, "num_frames": 5, "num_inference_steps": 1}
    response = await facade.post(
        "/run/darkroom/demo-wan-2.2-5b-t2v", json={**body, "enable_output_safety_checker": True}
    )
    assert response.status == 200, await response.text()
    result = await response.json()
    assert result["has_nsfw_concepts"] == [False] and result["video"]["content_type"] == "video/mp4"

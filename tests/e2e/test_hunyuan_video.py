"""HunyuanVideo 1.5 through the API on the real stack (tiny twins, CPU): each endpoint's mp4 has the
requested frames, size and 24 fps and no audio, answered as fal's {video: File, seed} (the
File with a VideoFile's details); the start image
reaches the graph; a LoRA changes the video (scale 0: no LoRA), and a quoted prompt (the ByT5 glyph
encoder) and the sampler fields run; fields darkroom cannot serve are 422s
naming the field and why.
Same request, same bytes: tests/e2e/test_determinism.py runs both demos three times."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from queue_stack import png

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

T2V, I2V = "darkroom/demo-hunyuan-video-15-t2v", "darkroom/demo-hunyuan-video-15-i2v"
FPS = 24  # HunyuanVideo 1.5's own rate: fal's schema has no frame-rate field


async def run(facade: TestClient, app_id: str, expect: int = 200, **body: Any) -> Any:
    """The response's JSON (the error detail unless 200) and, for a 200, the mp4's bytes."""
    response = await facade.post(f"/run/{app_id}", json={"prompt": "a red fox", "seed": 3, **body})
    assert response.status == expect, await response.text()
    result = await response.json()
    if expect != 200:
        return str(result["detail"])
    assert set(result) == {"video", "seed"} and result["seed"] == 3, result
    # fal's File, described as a VideoFile (its sizes, rate and frames as written; the usage meter's)
    described = {"url", "content_type", "file_name", "file_size", "width", "height", "fps", "num_frames"}
    assert result["video"].keys() == described | {"duration"} and result["video"]["fps"] == FPS
    assert result["video"]["content_type"] == "video/mp4"
    url = result["video"]["url"]
    return await (await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])).read()


def frames_of(data: bytes, width: int, height: int, count: int) -> np.ndarray:
    """The decoded frames, after checking the stream: H.264 at FPS, width x height, `count` frames."""
    with av.open(io.BytesIO(data)) as container:
        (stream,) = container.streams.video
        assert not container.streams.audio
        assert stream.codec_context.name == "h264" and stream.average_rate == FPS
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == count and frames[0].shape == (height, width, 3)
    return np.stack(frames).astype(np.int16)


async def test_text_to_video_gives_the_frames_asked_for_and_the_fields_reach_the_graph(
    facade: TestClient,
) -> None:
    # 5 frames = 2 latent frames (the first alone, then 4); 9:16 catches a width/height swap; 2 steps.
    body = {"num_frames": 5, "aspect_ratio": "9:16", "num_inference_steps": 2}
    plain = await run(facade, T2V, **body)
    frames = frames_of(plain, 64, 96, 5)
    assert np.abs(frames[1:] - frames[:1]).max() > 0, "a video, not one image repeated"
    # The LoRA alone changes the frames; at scale 0 it is no LoRA (the same bytes).
    lora = [{"path": "tiny/hunyuan-video-15-lora-a.safetensors", "scale": 1.0}]
    with_lora = frames_of(await run(facade, T2V, **body, loras=lora), 64, 96, 5)
    assert np.abs(with_lora - frames).mean() > 1, "the LoRA changes the video"
    assert await run(facade, T2V, **body, loras=[{**lora[0], "scale": 0.0}]) == plain
    # A quoted text runs the ByT5 glyph encoder and its mapper; the LoRA and the sampler fields on top.
    prompt = 'a red fox by a sign that says "OPEN"'
    changed = await run(facade, T2V, **body, prompt=prompt, loras=lora, sampler="dpm_2", scheduler="karras")
    frames_of(changed, 64, 96, 5)
    assert changed != plain


async def test_image_to_video_starts_from_the_image(facade: TestClient) -> None:
    body = {"num_frames": 5, "num_inference_steps": 2}
    first = await run(facade, I2V, **body, image_url=png(80, 64, 1))
    frames_of(first, 96, 64, 5)
    assert first != await run(facade, I2V, **body, image_url=png(80, 64, 2)), "the image is used"


async def test_what_darkroom_cannot_serve_is_a_422_naming_the_field_and_why(facade: TestClient) -> None:
    detail = await run(facade, T2V, 422, enable_prompt_expansion=True)
    assert "enable_prompt_expansion" in detail and "language model" in detail
    blend = [{"model": "tiny-hunyuan-video-15-t2v", "weight": 1}]
    detail = await run(facade, T2V, 422, model_blend=blend)
    assert "model_blend" in detail and "UNETLoader" in detail
    detail = await run(facade, I2V, 422)
    assert "image_url" in detail
    detail = await run(facade, T2V, 422, num_frames=18)
    assert "num_frames" in detail and "CPU demo" in detail

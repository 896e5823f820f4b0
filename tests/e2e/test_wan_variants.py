"""Wan 2.2 A14B's further endpoints on the tiny models (the demo twins of fal's video-to-video,
text-to-image and the two LoRA endpoints), Wan 2.2 S2V's speech-to-video twin (its mp4 carries the input
sound) and the encoder's fields on the existing ones, on the real
stack: frames, rates and sizes read back with PyAV. The same request's bytes again are
tests/e2e/test_determinism.py's (every demo twin, three rounds); here each generation carries several
checks."""

from __future__ import annotations

import base64
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from queue_stack import png

from tests import media_files

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

V2V, T2I = "darkroom/demo-wan-2.2-a14b-v2v", "darkroom/demo-wan-2.2-a14b-t2i"
T2V_LORA, I2V_LORA = "darkroom/demo-wan-2.2-a14b-t2v-lora", "darkroom/demo-wan-2.2-a14b-i2v-lora"
S2V = "darkroom/demo-wan-2.2-s2v"
LORA = "tiny/wan-a14b-lora-a.safetensors"
CLIP = "data:video/mp4;base64," + base64.b64encode(media_files.mp4(12, width=80, height=64, fps=8)).decode()


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


async def post(facade: TestClient, app_id: str, expect: int = 200, **body: Any) -> dict[str, Any]:
    response = await facade.post(f"/run/{app_id}", json={"prompt": "a red fox", "seed": 5, **body})
    assert response.status == expect, await response.text()
    return dict(await response.json())


async def download(facade: TestClient, url: str) -> bytes:
    response = await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])
    assert response.status == 200
    return await response.read()


async def video(facade: TestClient, app_id: str, **body: Any) -> bytes:
    result = await post(facade, app_id, **body)
    assert result["video"]["content_type"] == "video/mp4" and result["seed"] == 5
    return await download(facade, result["video"]["url"])


def frames_of(mp4: bytes, *, sound: bool = False) -> tuple[np.ndarray, float]:
    """Every decoded frame (T x H x W x 3 uint8) and the stream's frame rate."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.mp4"
        path.write_bytes(mp4)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert bool(container.streams.audio) == sound, "only speech-to-video's videos have sound"
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            return np.stack(frames), float(stream.average_rate or 0)


def sound_of(mp4: bytes) -> tuple[str, int, np.ndarray]:
    """The audio stream's codec, sample rate and decoded mono samples."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.mp4"
        path.write_bytes(mp4)
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            chunks = [frame.to_ndarray()[:1] for frame in container.decode(stream)]  # AAC: planar
            return stream.codec_context.name, stream.codec_context.sample_rate, np.concatenate(chunks, 1)[0]


def speech(seconds: float, rate: int, pitch_hz: float) -> tuple[bytes, np.ndarray]:
    """A mono 16-bit wav that changes over time (a gliding tone under a 3 Hz envelope), and its samples."""
    t = np.arange(int(seconds * rate)) / rate
    signal = np.sin(2 * math.pi * (pitch_hz * t + 150 * t * t)) * (0.55 + 0.45 * np.sin(2 * math.pi * 3 * t))
    signal = signal * 12000 / 32768
    return media_files.wav_of(signal, rate), signal


def best_correlation(got: np.ndarray, want: np.ndarray, max_lag: int = 4096) -> float:
    """The highest normalised correlation of `got` with `want` over lags up to max_lag samples (AAC's
    encoder delay shifts the decoded sound by a few hundred samples)."""
    best = 0.0
    n = min(len(got), len(want)) - max_lag
    for lag in range(max_lag):
        a, b = got[lag : lag + n], want[:n]
        best = max(best, float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
    return best


async def test_video_to_video_strength_frames_and_the_encoders_settings(facade: TestClient) -> None:
    kept = await video(facade, V2V, video_url=CLIP, strength=0, num_frames=5, frames_per_second=8)
    frames, fps = frames_of(kept)
    # aspect_ratio auto: the clip's 80 x 64 is nearest 1:1, so the demo's 64 x 64
    assert frames.shape == (5, 64, 64, 3) and fps == 8
    redone = await video(
        facade, V2V, video_url=CLIP, strength=1, num_frames=5, frames_per_second=8, num_inference_steps=2
    )
    assert frames_of(redone)[0].shape == frames.shape
    assert redone != kept, "strength 1 gave strength 0's video: the schedule did not run"
    assert np.abs(frames_of(redone)[0].astype(int) - frames.astype(int)).mean() > 2
    # the same frames (strength 0 runs no sampler) through other encoder settings: other bytes, a
    # smaller file at fal's "low" quality, the same frames within the encoder's loss
    small = await video(
        facade, V2V, video_url=CLIP, strength=0, num_frames=5, frames_per_second=8,
        video_quality="low", video_write_mode="fast",
    )  # fmt: skip
    assert small != kept and len(small) < len(kept)
    assert np.abs(frames_of(small)[0].astype(int) - frames.astype(int)).mean() < 12


async def test_a_bad_video_url_is_a_422_naming_the_field_before_any_worker(facade: TestClient) -> None:
    cases = [
        (
            data_uri(b"not a video at all\n" * 10, "text/plain"),
            "video_url: the file is text/plain, not video",
        ),
        (data_uri(media_files.empty_video("avi"), "video/x-msvideo"), "video_url: the video has no frames"),
        (data_uri(media_files.wav(0.5), "audio/wav"), "video_url: the file is audio/wav, not video"),
        (data_uri(media_files.mp4(20)[:900], "video/mp4"), "video_url: not a"),
    ]
    for url, message in cases:
        detail = (await post(facade, V2V, expect=422, video_url=url))["detail"]
        assert str(detail).startswith(message), detail
    detail = (await post(facade, V2V, expect=422, video_url=CLIP, num_interpolated_frames=1))["detail"]
    assert "num_interpolated_frames" in str(detail) and "third-party" in str(detail)


async def test_a_lora_on_the_high_expert_only_changes_the_video(facade: TestClient) -> None:
    body = {"num_frames": 5, "num_inference_steps": 2, "aspect_ratio": "16:9"}
    plain = await video(facade, T2V_LORA, **body)
    with_lora = await video(
        facade, T2V_LORA, loras=[{"path": LORA, "transformer": "high", "scale": 1.5}], **body
    )
    frames, fps = frames_of(with_lora)
    assert frames.shape == (5, 64, 96, 3) and fps == 16
    assert np.abs(frames.astype(int) - frames_of(plain)[0].astype(int)).mean() > 1, (
        "a LoRA on the high-noise expert left the video as it was"
    )


async def test_image_to_video_lora_runs_with_both_experts_lora(facade: TestClient) -> None:
    mp4 = await video(
        facade, I2V_LORA, image_url=png(80, 64, 2), num_frames=5, num_inference_steps=2,
        frames_per_second=12, loras=[{"path": LORA, "transformer": "both", "scale": 0.5}],
    )  # fmt: skip
    frames, fps = frames_of(mp4)
    assert frames.shape == (5, 64, 64, 3) and fps == 12


async def test_text_to_image_is_one_frame_answered_as_fals_image(facade: TestClient) -> None:
    result = await post(
        facade, T2I, image_size={"width": 80, "height": 48}, num_inference_steps=2,
        enable_output_safety_checker=True,
    )  # fmt: skip
    assert set(result) == {"image", "seed", "has_nsfw_concepts"} and result["seed"] == 5
    assert result["has_nsfw_concepts"] == [False]
    image = result["image"]
    assert (image["width"], image["height"], image["content_type"]) == (80, 48, "image/png")
    with Image.open(io.BytesIO(await download(facade, image["url"]))) as png_file:
        assert png_file.size == (80, 48) and png_file.format == "PNG"
    assert (await post(facade, T2I, expect=422, num_frames=5, enable_prompt_expansion=True))["detail"]


async def test_speech_to_video_carries_the_input_sound_cut_to_the_frames(facade: TestClient) -> None:
    wav, samples = speech(1.0, 16000, 300)
    other = speech(1.0, 16000, 700)[1]
    mp4 = await video(
        facade, S2V, image_url=png(80, 64, 3), audio_url=data_uri(wav, "audio/wav"), num_frames=5,
        frames_per_second=8, num_inference_steps=2,
    )  # fmt: skip
    frames, fps = frames_of(mp4, sound=True)
    assert frames.shape == (5, 64, 96, 3) and fps == 8
    codec, rate, decoded = sound_of(mp4)
    assert (codec, rate) == ("aac", 16000)
    # 5 frames at 8 fps: 0.625 s; the 1 s input is cut to it (AAC's last packet pads by under 1024 samples)
    assert abs(len(decoded) / rate - 5 / 8) < 1 / 8, len(decoded) / rate
    mine, theirs = best_correlation(decoded, samples), best_correlation(decoded, other)
    assert mine > 0.9 and theirs < 0.5, (mine, theirs)
    # darkroom's LoRA stack on the S2V model (its blocks are A14B's at the tiny widths)
    with_lora = await video(
        facade, S2V, image_url=png(80, 64, 3), audio_url=data_uri(wav, "audio/wav"), num_frames=5,
        frames_per_second=8, num_inference_steps=2, loras=[{"path": LORA, "scale": 1.5}],
    )  # fmt: skip
    assert np.abs(frames_of(with_lora, sound=True)[0].astype(int) - frames.astype(int)).mean() > 1
    bad = data_uri(b"not audio at all\n" * 10, "text/plain")
    detail = (await post(facade, S2V, expect=422, image_url=png(80, 64, 3), audio_url=bad))["detail"]
    assert str(detail).startswith("audio_url: the file is text/plain, not audio"), detail
    for field, value in (("vae", "tiny-wan21-vae"), ("denoise", 0.5), ("enable_safety_checker", True)):
        body = {"image_url": png(80, 64, 3), "audio_url": data_uri(wav, "audio/wav"), field: value}
        detail = (await post(facade, S2V, expect=422, **body))["detail"]
        assert field in str(detail), detail

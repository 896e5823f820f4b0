"""Audio and video inputs are fetched under the address policy, probed with PyAV and bounded before any
worker sees them; each refusal is a 422 naming the field (``server/media/av_inputs.py``)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from server.errors import InputError
from server.media.av_inputs import MediaFile, MediaKind, fetch_media
from server.media.inputs import input_area
from server.security import netpolicy
from server.security.netpolicy import AddressPolicy
from server.settings import Settings, load_settings
from tests import media_files


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": str(tmp_path), "input_max_frames": 40, "input_max_media_s": 10.0}
    values.update(overrides)
    return load_settings({}, **values)


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


async def fetch(settings: Settings, url: str, field: str, kind: MediaKind) -> MediaFile:
    async with netpolicy.guarded_session(AddressPolicy.from_settings(settings)) as session:
        with input_area(settings, "req") as folder:
            found = await fetch_media(url, field, kind, settings=settings, session=session, dest_dir=folder)
            assert found.path.read_bytes()  # complete on disk while the area lives
            return found


async def refused(settings: Settings, data: bytes, content_type: str, field: str, kind: MediaKind) -> str:
    with pytest.raises(InputError) as caught:
        await fetch(settings, data_uri(data, content_type), field, kind)
    assert caught.value.status == 422
    assert caught.value.message.startswith(f"{field}: "), caught.value.message
    return caught.value.message


async def test_a_video_is_probed_from_its_decoded_frames(tmp_path: Path) -> None:
    found = await fetch(
        make_settings(tmp_path), data_uri(media_files.mp4(12, fps=8), "video/mp4"), "video_url", "video"
    )
    info = found.info
    assert (info.kind, info.container, info.codec) == ("video", "mov", "h264")
    assert (info.frames, info.fps, info.width, info.height) == (12, 8.0, 32, 32)
    assert info.duration_s == pytest.approx(1.5) and info.size_bytes > 0


async def test_an_audio_file_is_probed_from_its_decoded_samples(tmp_path: Path) -> None:
    found = await fetch(
        make_settings(tmp_path), data_uri(media_files.wav(1.5), "audio/wav"), "audio_url", "audio"
    )
    info = found.info
    assert (info.kind, info.container, info.codec) == ("audio", "wav", "pcm_s16le")
    assert (info.sample_rate, info.channels, info.frames) == (16000, 1, 0)
    assert info.duration_s == pytest.approx(1.5)


async def test_a_text_file_is_not_media(tmp_path: Path) -> None:
    message = await refused(
        make_settings(tmp_path), b"just some words\n" * 20, "text/plain", "video_url", "video"
    )
    assert "text/plain, not video" in message and "video/mp4" in message


async def test_a_text_file_labelled_as_video_is_refused_by_the_demuxer(tmp_path: Path) -> None:
    # the declared type is used when the bytes are not recognised: ffmpeg's named demuxer refuses it
    message = await refused(make_settings(tmp_path), b"not a movie\n" * 20, "video/mp4", "video_url", "video")
    assert "not a video file PyAV can read" in message


async def test_an_image_is_not_a_video(tmp_path: Path) -> None:
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    message = await refused(make_settings(tmp_path), png, "image/png", "video_url", "video")
    assert "image/png, not video" in message


async def test_an_mp4_over_the_size_bound(tmp_path: Path) -> None:
    data = media_files.mp4(12)
    message = await refused(
        make_settings(tmp_path, input_max_bytes=len(data) - 1), data, "video/mp4", "video_url", "video"
    )
    assert "too large" in message


async def test_an_mp4_over_the_frame_bound(tmp_path: Path) -> None:
    message = await refused(make_settings(tmp_path), media_files.mp4(41), "video/mp4", "video_url", "video")
    assert "more than 40 frames (DARKROOM_INPUT_MAX_FRAMES)" in message


async def test_an_mp4_over_the_duration_bound(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, input_max_media_s=2.0)
    message = await refused(settings, media_files.mp4(24, fps=8), "video/mp4", "video_url", "video")
    assert "too long: its header claims 3.0 s; at most 2 s (DARKROOM_INPUT_MAX_MEDIA_S)" in message


@pytest.mark.parametrize(
    ("container_format", "content_type", "reason"),
    [
        ("mp4", "video/mp4", "the file has no video stream"),
        ("avi", "video/x-msvideo", "the video has no frames"),
    ],
)
async def test_a_zero_frame_video(
    tmp_path: Path, container_format: str, content_type: str, reason: str
) -> None:
    data = media_files.empty_video(container_format)
    message = await refused(make_settings(tmp_path), data, content_type, "video_url", "video")
    assert message == f"video_url: {reason}"


async def test_a_truncated_video(tmp_path: Path) -> None:
    data = media_files.mp4(20)
    message = await refused(
        make_settings(tmp_path), data[: len(data) // 2], "video/mp4", "video_url", "video"
    )
    assert "not a video file PyAV can read" in message or "not a complete video" in message


async def test_a_ten_hour_audio_header(tmp_path: Path) -> None:
    data = media_files.wav_claiming(10 * 3600)
    assert len(data) < 4000  # a tenth of a second of samples behind the claim
    message = await refused(make_settings(tmp_path), data, "audio/wav", "audio_url", "audio")
    assert "too long: its header claims 36000.0 s" in message


async def test_a_wav_claiming_more_than_it_holds(tmp_path: Path) -> None:
    message = await refused(
        make_settings(tmp_path), media_files.wav_claiming(5), "audio/wav", "audio_url", "audio"
    )
    assert "claims 5.0 s of audio, but the file holds 0.1 s" in message


async def test_audio_over_the_duration_bound(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, input_max_media_s=1.0)
    message = await refused(settings, media_files.wav(1.5), "audio/wav", "audio_url", "audio")
    assert "too long" in message and "at most 1 s" in message


async def test_a_video_without_sound_is_no_audio(tmp_path: Path) -> None:
    message = await refused(make_settings(tmp_path), media_files.mp4(4), "video/mp4", "audio_url", "audio")
    assert "no audio stream" in message

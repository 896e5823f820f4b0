"""Image and video encoding for the save nodes: formats, sizes, determinism, and the clear errors."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from darkroom.formats.media import (
    FORMATS,
    Audio,
    encode_image,
    encode_video,
    video_size,
    x264_instruction_sets,
)
from PIL import Image, ImageFilter


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_encodes_each_format_at_its_size(fmt):
    pixels = np.random.default_rng(0).random((24, 40, 3), dtype=np.float32)
    data = encode_image(pixels, fmt)
    image = Image.open(io.BytesIO(data))
    assert image.size == (40, 24)
    assert Image.MIME[image.format] == FORMATS[fmt]
    assert encode_image(pixels, fmt) == data  # no timestamps or metadata: same pixels, same bytes


def test_png_is_lossless():
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.float32) / 255.0
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(pixels, "png"))))
    assert np.array_equal(decoded, np.rint(pixels * 255).astype(np.uint8))


def test_unknown_format_names_the_allowed_ones():
    with pytest.raises(ValueError, match="jpeg"):
        encode_image(np.zeros((2, 2, 3)), "gif")


def decode_video(data: bytes) -> tuple[av.video.stream.VideoStream, list[np.ndarray]]:
    with av.open(io.BytesIO(data)) as container:
        (stream,) = container.streams.video
        return stream, [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]


def test_video_is_h264_mp4_with_every_frame_at_its_size():
    frames = np.random.default_rng(2).random((6, 32, 48, 3), dtype=np.float32)
    data = encode_video(frames, 16.0)
    stream, decoded = decode_video(data)
    assert data[4:8] == b"ftyp"
    assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    assert stream.average_rate == 16 and len(decoded) == 6
    assert {f.shape for f in decoded} == {(32, 48, 3)}


def test_video_bytes_depend_only_on_frames_and_settings():
    frames = np.random.default_rng(3).random((4, 16, 16, 3), dtype=np.float32)
    data = encode_video(frames, 24.0)
    assert encode_video(frames.copy(), 24.0) == data
    assert encode_video(frames, 24.0, crf=30) != data
    assert encode_video(frames[::-1], 24.0) != data


def blurred_noise(seed: int, height: int = 64, width: int = 96) -> np.ndarray:
    noise = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2)), np.float32) / 255.0


def test_video_bytes_do_not_depend_on_where_the_frames_lie_in_memory():
    """x264's AVX-512 kernels gave one of several encodings of these frames, by heap layout (on AVX-512
    CPUs); it now runs without them, so every encoding is the same."""
    frames = np.stack([blurred_noise(seed) for seed in range(5)])
    rng = np.random.default_rng(4)
    encodings = set()
    for attempt in range(30):  # before the fix: 3 to 6 encodings in 30 on such a CPU
        ballast = [np.empty(int(rng.integers(1, 200_000)), np.uint8) for _ in range(attempt % 7)]
        encodings.add(encode_video(frames, 24.0))
        del ballast
    assert len(encodings) == 1


AVX512_EPYC = frozenset(
    {"sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "abm", "avx", "fma", "bmi1", "bmi2", "avx2"}
    | {"avx512f", "avx512bw", "avx512_bf16"}
)


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", AVX512_EPYC, "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,LZCNT,AVX,FMA3,BMI1,BMI2,AVX2"),
        ("x86_64", frozenset({"sse", "sse2", "pni", "ssse3"}), "MMX2,SSE,SSE2,SSE3,SSSE3"),
        # x264's BMI and FMA names imply AVX: without it (an OS that hides it) they are left out too
        ("x86_64", AVX512_EPYC - {"avx"}, "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,LZCNT"),
        ("x86_64", frozenset(), "MMX2,SSE,SSE2"),  # no cpuinfo: x86-64's baseline
        ("aarch64", frozenset({"neon", "asimd"}), "auto"),
    ],
)
def test_x264_gets_the_cpus_instruction_sets_but_avx512(machine, flags, expected):
    assert x264_instruction_sets(machine, flags) == expected


def test_video_colours_survive_encoding():
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.4, 0.8]], dtype=np.float32)
    frames = np.broadcast_to(colours[:, None, None, :], (4, 16, 16, 3))
    _, decoded = decode_video(encode_video(frames, 8.0, crf=1))
    for colour, frame in zip(colours, decoded, strict=True):
        assert np.abs(frame[8, 8].astype(int) - np.rint(colour * 255)).max() <= 4


def test_odd_sides_are_padded_to_even_with_the_edge():
    frames = np.zeros((2, 5, 7, 3), dtype=np.float32)
    frames[:, :, -1] = 1.0  # last column white: the padding column repeats it
    assert video_size(5, 7) == (6, 8)
    _, decoded = decode_video(encode_video(frames, 10.0, crf=1))
    assert {f.shape for f in decoded} == {(6, 8, 3)}
    assert decoded[0][:, -1].min() > 200 and decoded[0][:5, 0].max() < 50


def test_ntsc_frame_rate_is_kept_exact():
    stream, _ = decode_video(encode_video(np.zeros((2, 16, 16, 3)), 24000 / 1001))
    assert stream.average_rate == Fraction(24000, 1001)


@pytest.mark.parametrize(
    ("shape", "fps", "crf", "match"),
    [
        ((2, 8, 8), 8.0, 19, r"\(frames, height, width, 3\) array, got \(2, 8, 8\)"),
        ((0, 8, 8, 3), 8.0, 19, "non-empty"),
        ((2, 8, 8, 4), 8.0, 19, "got \\(2, 8, 8, 4\\)"),
        ((2, 8, 8, 3), 0.0, 19, "fps must be positive, got 0.0"),
        ((2, 8, 8, 3), 8.0, 52, "crf must be in 0..51"),
    ],
)
def test_bad_video_arguments_say_what_was_expected(shape, fps, crf, match):
    with pytest.raises(ValueError, match=match):
        encode_video(np.zeros(shape), fps, crf=crf)


def tone(seconds: float, rate_hz: int, channels: int = 2) -> Audio:
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    waves = [0.5 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)]
    return Audio(np.stack(waves).astype(np.float32), rate_hz)


def decode_audio(data: bytes) -> tuple[av.audio.stream.AudioStream | None, float, np.ndarray]:
    """The mp4's audio stream (None without one), its duration in seconds, and its decoded samples."""
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            return None, 0.0, np.zeros((0, 0))
        (stream,) = container.streams.audio
        duration_s = float(stream.duration * stream.time_base)
        return stream, duration_s, np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)


@pytest.mark.parametrize(
    ("seconds", "rate_hz", "channels"), [(3.0, 44100, 2), (0.4, 48000, 1), (0.0, 16000, 2)]
)
def test_audio_is_aac_of_the_videos_length(seconds, rate_hz, channels):
    """Longer audio is cut and shorter padded with silence: the track lasts as long as the frames,
    within one frame (AAC's frames of 1024 samples are well under one video frame)."""
    frames = np.random.default_rng(5).random((9, 16, 16, 3), dtype=np.float32)
    data = encode_video(frames, 8.0, audio=tone(seconds, rate_hz, channels))
    stream, duration_s, samples = decode_audio(data)
    assert stream is not None and stream.codec_context.name == "aac"
    assert (stream.rate, stream.channels) == (rate_hz, channels)
    assert abs(duration_s - 9 / 8.0) < 1 / 8.0
    assert len(decode_video(data)[1]) == 9  # the frames are all still there

    def loudness(start_s: float, end_s: float) -> float:  # past AAC's priming (its first 1024 samples)
        return float(np.sqrt(np.mean(samples[:, round(start_s * rate_hz) : round(end_s * rate_hz)] ** 2)))

    for start_s in (0.1, 1.0):  # the tone where it plays, silence after it
        assert (loudness(start_s, start_s + 0.1) > 0.2) == (seconds >= start_s + 0.1)
        assert (loudness(start_s, start_s + 0.1) < 0.05) == (seconds < start_s)


def test_audio_bytes_depend_only_on_samples_and_settings():
    frames = np.random.default_rng(6).random((4, 16, 16, 3), dtype=np.float32)
    sound = tone(1.0, 24000)
    data = encode_video(frames, 8.0, audio=sound)
    assert encode_video(frames.copy(), 8.0, audio=Audio(sound.samples.copy(), 24000)) == data
    assert encode_video(frames, 8.0, audio=Audio(sound.samples[::-1].copy(), 24000)) != data
    assert decode_audio(encode_video(frames, 8.0))[0] is None  # no audio: no audio stream at all


def test_a_rate_aac_cannot_carry_is_resampled_to_48_khz():
    stream, duration_s, samples = decode_audio(
        encode_video(np.zeros((4, 16, 16, 3)), 4.0, audio=tone(1.0, 22000))
    )
    assert stream is not None and stream.rate == 48000
    assert abs(duration_s - 1.0) < 1 / 4.0 and np.sqrt(np.mean(samples[:, 4096:8192] ** 2)) > 0.2


def test_comfy_audio_is_the_first_of_its_batch():
    torch = pytest.importorskip("torch")
    waveform = torch.zeros((2, 1, 100))
    waveform[0] += 0.25
    sound = Audio.from_comfy({"waveform": waveform, "sample_rate": 16000})
    assert sound.sample_rate_hz == 16000 and sound.samples.shape == (1, 100) and sound.samples.max() == 0.25
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        Audio.from_comfy({"waveform": torch.zeros((1, 100)), "sample_rate": 16000})


def test_a_silenced_track_keeps_its_shape_and_rate_and_plays_silence():
    sound = tone(0.5, 16000, 2)
    quiet = sound.silenced()
    assert quiet.samples.shape == sound.samples.shape and quiet.sample_rate_hz == 16000
    assert not quiet.samples.any() and sound.samples.any()  # the original is left as it was
    stream, duration_s, samples = decode_audio(encode_video(np.zeros((4, 16, 16, 3)), 8.0, audio=quiet))
    assert stream is not None and abs(duration_s - 0.5) < 1 / 8.0 and not samples.any()


@pytest.mark.parametrize(
    ("samples", "rate_hz", "match"),
    [(np.zeros(100), 16000, "1 or 2 channels"), (np.zeros((6, 100)), 16000, r"got \(6, 100\)"),
     (np.zeros((1, 100)), 0, "sample rate must be positive"), (np.full((1, 9), np.nan), 8000, "finite")],
)  # fmt: skip
def test_bad_audio_says_what_was_expected(samples, rate_hz, match):
    with pytest.raises(ValueError, match=match):
        encode_video(np.zeros((2, 8, 8, 3)), 8.0, audio=Audio(samples, rate_hz))

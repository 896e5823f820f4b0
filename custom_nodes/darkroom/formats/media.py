"""Encode decoded images and videos to files; imports no ComfyUI, so it is testable on its own."""

from __future__ import annotations

import functools
import io
import platform
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
VIDEO_CONTENT_TYPE = "video/mp4"
CRF_MAX = 51  # x264's range; 0 is lossless, which many browsers cannot play
_FPS_MAX_DENOMINATOR = 1001  # keeps NTSC rates exact (24000/1001)
# Bit-exact muxing and encoding leave out library version strings; one thread makes x264's output a
# function of the frames alone; faststart puts the index first so browsers can play while loading.
_CONTAINER_OPTIONS = {"movflags": "+faststart", "fflags": "+bitexact"}
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
X264_PRESET = "medium"
# fal's video_quality and video_write_mode (its video endpoints' encoder settings) as x264's crf and
# preset: quality is the crf (lower is better and larger; "high" is darkroom's crf 19 of before), write
# mode trades encoding time against size at that quality. Each gives the same bytes for the same frames.
VIDEO_QUALITY_CRF = {"low": 28, "medium": 23, "high": 19, "maximum": 14}
VIDEO_WRITE_MODE_PRESET = {"fast": "veryfast", "balanced": "medium", "small": "slower"}
# The audio track: AAC-LC from FFmpeg's own encoder (single-threaded, its coder and rate pinned so the
# bytes are a function of the samples alone). Rates AAC cannot carry are resampled to the first here.
AUDIO_CODEC = "aac"
_AAC_OPTIONS = {"aac_coder": "twoloop", "profile": "aac_low"}
_AAC_BIT_RATE_PER_CHANNEL = 96_000
_AAC_FALLBACK_RATE = 48_000
_AAC_FRAME_SAMPLES = 1024
AUDIO_CHANNELS_MAX = 2
# x264's names for the x86 instruction sets it has kernels for, by the Linux cpuinfo flag that shows
# each; SSE2 is x86-64's baseline. AVX-512 is left out on purpose (see `x264_instruction_sets`).
_X264_BASELINE = ("MMX2", "SSE", "SSE2")
_X264_BY_CPU_FLAG = {
    "pni": "SSE3", "ssse3": "SSSE3", "sse4_1": "SSE4.1", "sse4_2": "SSE4.2", "abm": "LZCNT",
    "avx": "AVX", "xop": "XOP", "fma4": "FMA4", "fma": "FMA3", "bmi1": "BMI1", "bmi2": "BMI2",
    "avx2": "AVX2",
}  # fmt: skip
_NEEDS_AVX = {"XOP", "FMA4", "FMA3", "BMI1", "BMI2", "AVX2"}  # x264's names for these imply AVX


def x264_instruction_sets(machine: str, cpu_flags: frozenset[str]) -> str:
    """x264's `asm` setting for this CPU: every instruction set it has, but AVX-512.

    x264's AVX-512 kernels make its output depend on where the frames happen to lie in memory: the
    same frames encoded twice in one process gave different bytes (decoded pixels off by up to 26
    levels), on AMD EPYC with AVX-512, while its C, SSE2 and AVX2 kernels gave one answer every time.
    Left out, encoding is as fast (measured: scripts/bench_video_encode.py) and repeatable. Off x86
    (NEON on arm64) x264 picks for itself.
    """
    if machine.lower() not in ("x86_64", "amd64"):
        return "auto"
    names = [*_X264_BASELINE]
    names += [name for flag, name in _X264_BY_CPU_FLAG.items() if flag in cpu_flags]
    if "avx" not in cpu_flags:
        names = [name for name in names if name not in _NEEDS_AVX]
    return ",".join(names)


@functools.cache
def _this_cpus_x264_instruction_sets() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""  # not Linux: x86-64's baseline still holds
    flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return x264_instruction_sets(platform.machine(), frozenset(flags.split()))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def encode_image(pixels: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode one HxWx3 float image in [0, 1] as png, jpeg or webp, with no metadata (deterministic)."""
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
    image = Image.fromarray(_to_uint8(pixels))
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=4)
    elif fmt == "jpeg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="WEBP", quality=quality)
    return out.getvalue()


def video_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) a video of these frames is encoded at: each side rounded up to even (yuv420p)."""
    return height + height % 2, width + width % 2


@dataclass(frozen=True)
class Audio:
    """A sound track: (channels, samples) float samples in [-1, 1] at `sample_rate_hz`.

    `from_comfy` takes ComfyUI's AUDIO value ({"waveform": (batch, channels, samples) tensor,
    "sample_rate": int}), the first item of its batch.
    """

    samples: np.ndarray
    sample_rate_hz: int

    @classmethod
    def from_comfy(cls, audio: dict) -> Audio:
        waveform = audio["waveform"]
        if getattr(waveform, "ndim", 0) != 3 or waveform.shape[0] < 1:
            raise ValueError(
                f"audio waveform must be (batch, channels, samples), got {tuple(waveform.shape)}"
            )
        return cls(waveform[0].detach().cpu().float().numpy(), int(audio["sample_rate"]))

    def silenced(self) -> Audio:
        """The same track (channels, length and rate) with every sample 0: a flagged video's sound."""
        return Audio(np.zeros_like(self.samples), self.sample_rate_hz)


def encode_video(
    frames: np.ndarray, fps: float, *, crf: int = 19, preset: str = X264_PRESET, audio: Audio | None = None
) -> bytes:
    """Encode TxHxWx3 float frames in [0, 1] as an H.264 yuv420p mp4 (BT.709, limited range).

    Same frames and settings give the same bytes: one encoder thread, no AVX-512 (see
    `x264_instruction_sets`), bit-exact muxing, no timestamps or metadata. Odd sides are padded to
    even by repeating the last row or column (see `video_size`).

    With `audio`, the mp4 also holds an AAC track of exactly the video's length (T / fps seconds):
    longer audio is cut, shorter is padded with silence, so sound and frames end together. Mono and
    stereo are kept; a rate AAC cannot carry is resampled to 48 kHz. Without it there is no audio
    stream at all.
    """
    _check_video_args(frames, fps, crf)
    if preset not in X264_PRESETS:
        raise ValueError(f"x264 preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")
    if audio is not None:
        _check_audio(audio)
    height, width = video_size(frames.shape[1], frames.shape[2])
    rate = Fraction(fps).limit_denominator(_FPS_MAX_DENOMINATOR)
    with tempfile.TemporaryDirectory(prefix="darkroom-video-") as tmp:
        path = Path(tmp) / "video.mp4"  # faststart rewrites the file by name: it cannot work in memory
        _write_mp4(path, frames, rate, (height, width), (crf, preset), audio)
        return path.read_bytes()


def _write_mp4(
    path: Path,
    frames: np.ndarray,
    rate: Fraction,
    size: tuple[int, int],
    settings: tuple[int, str],
    audio: Audio | None,
) -> None:
    (height, width), (crf, preset) = size, settings
    with av.open(str(path), mode="w", format="mp4", options=_CONTAINER_OPTIONS) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / rate
        codec = stream.codec_context
        codec.thread_count = 1
        codec.flags |= av.codec.context.Flags.bitexact
        codec.color_range, codec.colorspace = ColorRange.MPEG, Colorspace.ITU709
        codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        codec.options = {
            "crf": str(crf),
            "preset": preset,
            "x264-params": f"asm={_this_cpus_x264_instruction_sets()}",
        }
        # every stream is added before the first packet is muxed (that writes the header)
        sound = _add_audio(container, audio, len(frames) / rate) if audio is not None else None
        for index, pixels in enumerate(frames):
            container.mux(stream.encode(_yuv_frame(pixels, height, width, index)))
        container.mux(stream.encode(None))
        if sound is not None:
            _write_audio(container, *sound)


def _add_audio(
    container: av.container.OutputContainer, audio: Audio, duration_s: Fraction
) -> tuple[av.audio.stream.AudioStream, np.ndarray]:
    """An AAC stream for `audio`, and its samples cut or padded with silence to `duration_s`."""
    samples, rate_hz = _aac_rate(np.asarray(audio.samples, np.float32), audio.sample_rate_hz)
    channels = samples.shape[0]
    length = round(duration_s * rate_hz)
    samples = np.pad(samples[:, :length], ((0, 0), (0, max(0, length - samples.shape[1]))))
    stream = container.add_stream(AUDIO_CODEC, rate=rate_hz)
    codec = stream.codec_context
    codec.layout, codec.format = ("mono" if channels == 1 else "stereo"), "fltp"
    codec.bit_rate = _AAC_BIT_RATE_PER_CHANNEL * channels
    codec.thread_count = 1
    codec.flags |= av.codec.context.Flags.bitexact
    codec.options = dict(_AAC_OPTIONS)
    stream.time_base = Fraction(1, rate_hz)
    return stream, np.clip(samples, -1.0, 1.0)


def _write_audio(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, samples: np.ndarray
) -> None:
    rate_hz, layout = stream.codec_context.sample_rate, stream.codec_context.layout
    for start in range(0, samples.shape[1], _AAC_FRAME_SAMPLES):
        chunk = np.ascontiguousarray(samples[:, start : start + _AAC_FRAME_SAMPLES])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate_hz, start, stream.time_base
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _aac_rate(samples: np.ndarray, rate_hz: int) -> tuple[np.ndarray, int]:
    """The samples at a rate AAC carries: as they are, or resampled (by FFmpeg's swresample) to 48 kHz."""
    if rate_hz in av.codec.Codec(AUDIO_CODEC, "w").audio_rates:
        return samples, rate_hz
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=_AAC_FALLBACK_RATE)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate = rate_hz
    out = [f.to_ndarray() for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out, axis=1) if out else samples[:, :0], _AAC_FALLBACK_RATE


def _check_video_args(frames: np.ndarray, fps: float, crf: int) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(
            f"video frames must be a non-empty (frames, height, width, 3) array, got {frames.shape}"
        )
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= CRF_MAX:
        raise ValueError(f"crf must be in 0..{CRF_MAX} (lower is better quality), got {crf}")


def _check_audio(audio: Audio) -> None:
    shape = np.shape(audio.samples)
    if len(shape) != 2 or not 1 <= shape[0] <= AUDIO_CHANNELS_MAX:
        raise ValueError(f"audio samples must be a (channels, samples) array of 1 or 2 channels, got {shape}")
    if audio.sample_rate_hz <= 0:
        raise ValueError(f"audio sample rate must be positive, got {audio.sample_rate_hz}")
    if not np.isfinite(audio.samples).all():  # AAC refuses them with a bare EINVAL
        raise ValueError("audio samples must be finite; the sound holds NaN or infinity")


def _yuv_frame(pixels: np.ndarray, height: int, width: int, index: int) -> av.VideoFrame:
    rgb = _to_uint8(pixels)
    pad = ((0, height - rgb.shape[0]), (0, width - rgb.shape[1]), (0, 0))
    if any(after for _, after in pad):
        rgb = np.pad(rgb, pad, mode="edge")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = frame.reformat(
        format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG, threads=1
    )
    frame.pts = index
    return frame

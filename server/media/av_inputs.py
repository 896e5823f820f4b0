"""Audio and video inputs (``video_url``, ``audio_url``): fetched like images, probed, bounded.

The API, for a generator or a mapping that takes media::

    found = await fetch_media(url, "video_url", "video", settings=..., session=..., dest_dir=...)
    found.path, found.info.frames, found.info.fps, found.info.duration_s, found.info.sample_rate

``fetch_media`` fetches under the address policy (``inputs.fetch_input``: https only, every hop's
address checked, ``input_max_bytes``), then ``probe`` reads the file with PyAV in the facade, before any
worker is taken: the bytes must show one of the containers below (a text file, an HTML page or an image
is refused from its first bytes, so it never reaches ffmpeg or a worker); the demuxer is named, never
guessed, and only local file reads are allowed (ffmpeg's playlist formats could otherwise make it read
other files or URLs). The container's claimed duration is checked first (a 10-hour header is refused
before anything decodes), then every frame or audio packet is decoded, counted and bounded
(``input_max_media_s``, ``input_max_frames``, ``input_max_pixels``): a truncated or corrupt file, one
with no frames, or one longer than its header says is refused there. Every refusal is an ``InputError``
(422) whose message starts with the field.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import av
import av.error

from server.errors import InputError
from server.media import inputs
from server.media.objects import ObjectStore
from server.settings import Settings

MediaKind = Literal["video", "audio"]
# Sniffed content type -> the ffmpeg demuxer that reads it. The demuxer is named so ffmpeg never probes
# for one (its hls and concat demuxers follow references to other files and URLs).
VIDEO_DEMUXERS = {
    "video/mp4": "mov",
    "video/quicktime": "mov",
    "video/webm": "matroska",
    "video/x-msvideo": "avi",
}
AUDIO_DEMUXERS = {
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
    "audio/aac": "aac",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "video/mp4": "mov",  # m4a: an mp4 with an audio stream
    "video/webm": "matroska",
}
_DEMUXERS: dict[MediaKind, dict[str, str]] = {"video": VIDEO_DEMUXERS, "audio": AUDIO_DEMUXERS}
_OPEN_OPTIONS = {"protocol_whitelist": "file"}


@dataclass(frozen=True)
class MediaLimits:
    """What an input may be: its longest duration, most video frames and pixels per frame."""

    max_duration_s: float
    max_frames: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(settings.input_max_media_s, settings.input_max_frames, settings.input_max_pixels)


@dataclass(frozen=True)
class MediaInfo:
    """A probed input: what PyAV decoded, not what the header claims (``duration_s`` counted from the
    decoded frames or samples). Video fields are 0 for audio and audio fields 0 for video."""

    kind: MediaKind
    container: str  # the demuxer that read it ("mov", "matroska", "wav", ...)
    codec: str
    duration_s: float
    size_bytes: int
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


@dataclass(frozen=True)
class MediaFile:
    """A fetched and probed input, on disk in the request's input folder."""

    path: Path
    info: MediaInfo


async def fetch_media(
    url: str,
    field: str,
    kind: MediaKind,
    *,
    settings: Settings,
    session: aiohttp.ClientSession,
    dest_dir: Path,
    own_base_url: str | None = None,
    objects: ObjectStore | None = None,
) -> MediaFile:
    """Fetch ``url`` into ``dest_dir`` and probe it as ``kind``; a refusal is a 422 naming ``field``."""
    try:
        found = await inputs.fetch_input(
            url,
            settings=settings,
            session=session,
            dest_dir=dest_dir,
            own_base_url=own_base_url,
            objects=objects,
        )
    except InputError as e:
        raise type(e)(f"{field}: {e.message}", status=e.status, code=e.code, headers=e.headers) from e
    try:
        demuxer = _demuxer(found.content_type, field, kind)
        info = await asyncio.to_thread(
            probe, found.path, kind, field, MediaLimits.from_settings(settings), demuxer=demuxer
        )
    except BaseException:
        found.path.unlink(missing_ok=True)
        raise
    return MediaFile(found.path, info)


def _demuxer(content_type: str, field: str, kind: MediaKind) -> str:
    demuxer = _DEMUXERS[kind].get(content_type)
    if demuxer is None:
        allowed = ", ".join(sorted(_DEMUXERS[kind]))
        raise InputError(f"{field}: the file is {content_type}, not {kind}; expected one of {allowed}")
    return demuxer


def probe(path: Path, kind: MediaKind, field: str, limits: MediaLimits, *, demuxer: str) -> MediaInfo:
    """Open ``path`` with ``demuxer``, check the claimed duration, then decode all of it within
    ``limits``. Blocking: run it in a thread."""
    try:
        with av.open(str(path), format=demuxer, options=_OPEN_OPTIONS) as container:
            claimed_s = container.duration / av.time_base if container.duration else 0.0
            _check_duration(claimed_s, field, limits, "its header claims")
            if kind == "video":
                return _video(container, path, field, limits)
            return _audio(container, path, field, limits)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{field}: not a {kind} file PyAV can read ({demuxer}): {e}") from e


def _video(container: av.container.InputContainer, path: Path, field: str, limits: MediaLimits) -> MediaInfo:
    if not container.streams.video:
        raise InputError(f"{field}: the file has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise InputError(
            f"{field}: frames of {width}x{height} are too large; at most {limits.max_pixels} pixels a frame "
            "(DARKROOM_INPUT_MAX_PIXELS)"
        )
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    frames, first_s, last_s = 0, math.inf, 0.0
    try:
        for frame in container.decode(stream):
            frames += 1
            if frames > limits.max_frames:
                raise InputError(
                    f"{field}: more than {limits.max_frames} frames (DARKROOM_INPUT_MAX_FRAMES)",
                    code="input_too_large",
                )
            if frame.time is not None:
                first_s, last_s = min(first_s, frame.time), max(last_s, frame.time)
                _check_duration(last_s - min(first_s, last_s), field, limits, "its frames run")
    except av.error.FFmpegError as e:
        raise InputError(f"{field}: not a complete video: decoding frame {frames + 1} failed ({e})") from e
    if frames == 0:
        raise InputError(f"{field}: the video has no frames")
    if not fps > 0:
        raise InputError(f"{field}: the video does not say its frame rate")
    return MediaInfo(
        "video",
        container.format.name,
        stream.codec_context.name,
        duration_s=frames / fps,
        size_bytes=path.stat().st_size,
        frames=frames,
        fps=fps,
        width=width,
        height=height,
    )


def _audio(container: av.container.InputContainer, path: Path, field: str, limits: MediaLimits) -> MediaInfo:
    if not container.streams.audio:
        raise InputError(f"{field}: the file has no audio stream")
    stream = container.streams.audio[0]
    sample_rate = stream.codec_context.sample_rate
    if not sample_rate:
        raise InputError(f"{field}: the audio does not say its sample rate")
    if container.format.name == "wav":
        _check_wav_header(path, field, limits)
    samples = 0
    try:
        for frame in container.decode(stream):
            samples += frame.samples
            _check_duration(samples / sample_rate, field, limits, "its samples run")
    except av.error.FFmpegError as e:
        raise InputError(
            f"{field}: not a complete audio file: decoding failed after {samples} samples ({e})"
        ) from e
    if samples == 0:
        raise InputError(f"{field}: the audio has no samples")
    return MediaInfo(
        "audio",
        container.format.name,
        stream.codec_context.name,
        duration_s=samples / sample_rate,
        size_bytes=path.stat().st_size,
        sample_rate=sample_rate,
        channels=stream.codec_context.channels,
    )


_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # a streamed wav's data size: "until the end of the file"


def _check_wav_header(path: Path, field: str, limits: MediaLimits) -> None:
    """A wav's header states its length (the data chunk's size over the byte rate). ffmpeg trusts the
    file's end instead when the two disagree, so the claim is read here: a header claiming more than the
    bound is refused, as is one claiming more data than the file holds (cut short, or forged)."""
    with path.open("rb") as f:
        head = f.read(4096)
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        if chunk == b"data":
            if size in _WAV_UNKNOWN_SIZES or not byte_rate:
                return
            _check_duration(size / byte_rate, field, limits, "its header claims")
            held = path.stat().st_size - offset - 8
            if size > held:
                raise InputError(
                    f"{field}: its header claims {size / byte_rate:.1f} s of audio, but the file holds "
                    f"{held / byte_rate:.1f} s: it was cut short or its header is wrong"
                )
            return
        offset += 8 + size + size % 2


def _check_duration(duration_s: float, field: str, limits: MediaLimits, how: str) -> None:
    if duration_s > limits.max_duration_s:
        raise InputError(
            f"{field}: too long: {how} {duration_s:.1f} s; at most {limits.max_duration_s:g} s "
            "(DARKROOM_INPUT_MAX_MEDIA_S)",
            code="input_too_large",
        )

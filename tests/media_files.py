"""Small audio and video files for the tests of media inputs (``video_url``, ``audio_url``), made with
PyAV and the standard library: good ones, and the bad ones the probe must refuse."""

from __future__ import annotations

import io
import math
import struct
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def mp4(frames: int = 8, *, width: int = 32, height: int = 32, fps: int = 8) -> bytes:
    """An H.264 mp4 of ``frames`` frames: a colour ramp that moves, so frames differ."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(frames):
                x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
                y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
                rgb = np.concatenate([x + 0 * y, y + 0 * x, np.full((height, width, 1), 0.0)], axis=2)
                rgb = (rgb + index * 24) % 256
                frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path.read_bytes()


def wav(seconds: float = 1.0, *, rate: int = 16000) -> bytes:
    """A mono 16-bit wav: a 440 Hz tone."""
    samples = int(seconds * rate)
    return wav_of(np.sin(2 * math.pi * 440 * np.arange(samples) / rate) * 12000 / 32768, rate)


def wav_of(signal: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit wav of `signal` (floats in [-1, 1])."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal * 32768).astype("<i2").tobytes())
    return out.getvalue()


def wav_claiming(claimed_s: float, *, rate: int = 16000) -> bytes:
    """A short wav whose header claims ``claimed_s`` seconds (its RIFF and data sizes say so)."""
    data = bytearray(wav(0.1, rate=rate))
    claimed_bytes = int(claimed_s * rate * 2)
    struct.pack_into("<I", data, 4, claimed_bytes + 36)
    struct.pack_into("<I", data, 40, claimed_bytes)
    return bytes(data)


def empty_video(container_format: str = "mp4", *, width: int = 32, height: int = 32) -> bytes:
    """A video file with a video stream declared and no frames in it (an mp4's demuxer then shows no
    stream at all; an avi's shows one with no frames)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"empty.{container_format}"
        with av.open(str(path), mode="w", format=container_format) as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            container.start_encoding()  # writes the header, with no frames after it
        return path.read_bytes()

"""Decode the audio and video inputs the facade fetched and probed (``server/media/av_inputs.py``) into
arrays; imports no ComfyUI, so it is testable on its own. The facade has already refused anything that
is not one whole file of the media it claims, within the bounds; this only reads it."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

_OPEN_OPTIONS = {"protocol_whitelist": "file"}  # as the facade's probe: local reads only


def decode_video(path: Path, frames: int = 0, fps: float = 0.0) -> tuple[np.ndarray, float]:
    """(TxHxWx3 float32 frames in [0, 1], frames per second). ``fps`` > 0: resampled to that rate first
    (each output frame is the source frame showing at its time). ``frames`` > 0: exactly that many,
    the first ones, the last frame repeated when the video has fewer; 0: all of them."""
    decoded: list[np.ndarray] = []
    with av.open(str(path), options=_OPEN_OPTIONS) as container:
        if not container.streams.video:
            raise ValueError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path.name} does not say its frame rate")
        step = float(rate) / fps if fps > 0 else 1.0  # source frames per output frame
        for index, frame in enumerate(container.decode(stream)):
            # output frame k shows source frame floor(k * step): this one covers every k landing on it
            while len(decoded) * step < index + 1 - 1e-9 and not (frames and len(decoded) == frames):
                decoded.append(frame.to_ndarray(format="rgb24"))
            if frames and len(decoded) == frames:
                break
    if not decoded:
        raise ValueError(f"{path.name} has no frames")
    decoded += [decoded[-1]] * (frames - len(decoded) if frames else 0)
    return np.stack(decoded).astype(np.float32) / 255.0, fps if fps > 0 else float(rate)


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """(CxS float32 samples in [-1, 1], sample rate): the first audio stream, all of it."""
    chunks: list[np.ndarray] = []
    with av.open(str(path), options=_OPEN_OPTIONS) as container:
        if not container.streams.audio:
            raise ValueError(f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        for frame in container.decode(stream):
            chunks += [planar.to_ndarray() for planar in resampler.resample(frame)]
        chunks += [planar.to_ndarray() for planar in resampler.resample(None)]
    if not chunks:
        raise ValueError(f"{path.name} has no audio samples")
    return np.concatenate(chunks, axis=1).astype(np.float32), int(rate)

"""DarkroomSaveVideo with ComfyUI's AUDIO value: an AAC track of the frames' length, none without it."""

from __future__ import annotations

import io
from pathlib import Path

import av
import torch


def _saved(video: dict) -> bytes:
    import folder_paths

    path = Path(folder_paths.get_output_directory()) / video["subfolder"] / video["filename"]
    data = path.read_bytes()
    path.unlink()  # the output folder is ComfyUI's own: leave nothing behind
    return data


def _save(frames: torch.Tensor, audio: dict | None) -> bytes:
    from darkroom.nodes.output import DarkroomSaveVideo

    (video,) = DarkroomSaveVideo.execute(frames, 12.0, "audio-test", 19, None, audio).ui["images"]
    assert video["frames"] == len(frames) and video["fps"] == 12.0
    return _saved(video)


def test_the_save_node_muxes_comfy_audio_in_sync_and_reproducibly() -> None:
    frames = torch.rand((6, 16, 16, 3), generator=torch.Generator().manual_seed(0))
    seconds = torch.arange(44100) / 44100  # 1 s of sound under 0.5 s of frames: cut to the frames
    audio = {
        "waveform": (0.5 * torch.sin(2 * torch.pi * 440 * seconds)).expand(1, 2, -1),
        "sample_rate": 44100,
    }
    data = _save(frames, audio)
    with av.open(io.BytesIO(data)) as container:
        (video,), (sound,) = container.streams.video, container.streams.audio
        assert (sound.codec_context.name, sound.rate, sound.channels) == ("aac", 44100, 2)
        assert video.frames == 6
        assert abs(float(sound.duration * sound.time_base) - 6 / 12.0) < 1 / 12.0
    assert _save(frames, audio) == data  # same frames and sound, same bytes
    with av.open(io.BytesIO(_save(frames, None))) as container:
        assert not container.streams.audio and len(container.streams.video) == 1

"""DarkroomSaveVideo's encoder fields (fal's video_quality and video_write_mode as x264's crf and preset)
give the same bytes per setting and other bytes across settings; reverse writes the frames last to first."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch


def _save(frames: torch.Tensor, **settings: object) -> bytes:
    import folder_paths
    from darkroom.nodes.output import DarkroomSaveVideo

    (video,) = DarkroomSaveVideo.execute(frames, 8.0, "settings-test", **settings).ui["images"]
    path = Path(folder_paths.get_output_directory()) / video["subfolder"] / video["filename"]
    data = path.read_bytes()
    path.unlink()  # the output folder is ComfyUI's own: leave nothing behind
    return data


def _frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    ramp = torch.linspace(0, 1, 48)[None, None, :, None].expand(6, 32, 48, 3).clone()
    return (ramp + torch.arange(6)[:, None, None, None] / 6) % 1  # a ramp that moves: frames differ


def test_each_setting_reproduces_and_settings_differ(frames: torch.Tensor) -> None:
    found = {}
    for quality in ("low", "high", "maximum"):
        for mode in ("fast", "balanced", "small"):
            data = _save(frames, video_quality=quality, video_write_mode=mode)
            assert _save(frames, video_quality=quality, video_write_mode=mode) == data, (quality, mode)
            found[quality, mode] = data
    assert len(set(found.values())) == len(found), "two settings gave the same bytes"
    assert len(found["low", "balanced"]) < len(found["high", "balanced"]) < len(found["maximum", "balanced"])
    # fal's defaults are darkroom's encoding of before: crf 19, preset medium
    assert found["high", "balanced"] == _save(frames, crf=19)


def test_reverse_writes_the_frames_last_to_first(frames: torch.Tensor) -> None:
    forward = _frames(_save(frames, video_quality="maximum"))
    backward = _frames(_save(frames, video_quality="maximum", reverse=True))[::-1]
    assert np.abs(backward - forward).mean() < 3 < np.abs(backward[::-1] - forward).mean()

"""DarkroomLoadVideo and DarkroomLoadAudio decode a request's checked file from the input folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from darkroom.nodes.media_inputs import DarkroomLoadAudio, DarkroomLoadVideo

from tests import media_files


@pytest.fixture
def input_dir(tmp_path: Path) -> Iterator[Path]:
    import folder_paths

    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    (tmp_path / "darkroom").mkdir()
    (tmp_path / "darkroom" / "clip.mp4").write_bytes(media_files.mp4(6, width=48, height=32, fps=12))
    (tmp_path / "darkroom" / "tone.wav").write_bytes(media_files.wav(0.5, rate=8000))
    yield tmp_path
    folder_paths.set_input_directory(before)


def test_a_video_decodes_to_frames_with_its_rate(input_dir: Path) -> None:
    images, fps, count = DarkroomLoadVideo.execute(video="darkroom/clip.mp4", frames=0).result
    assert tuple(images.shape) == (6, 32, 48, 3) and (fps, count) == (12.0, 6)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert float((images[1] - images[0]).abs().mean()) > 0.01, "the frames are the video's, not one repeated"
    longer, _, count = DarkroomLoadVideo.execute(video="darkroom/clip.mp4", frames=9).result
    assert count == 9 and bool((longer[5:] == images[5]).all()), "the last frame repeats up to the count"
    first, _, count = DarkroomLoadVideo.execute(video="darkroom/clip.mp4", frames=2).result
    assert count == 2 and bool((first == images[:2]).all())


def test_audio_decodes_at_its_own_rate(input_dir: Path) -> None:
    audio, duration_s = DarkroomLoadAudio.execute(audio="darkroom/tone.wav").result
    assert tuple(audio["waveform"].shape) == (1, 1, 4000) and audio["sample_rate"] == 8000
    assert duration_s == 0.5 and 0.3 < float(audio["waveform"].abs().max()) < 0.4


def test_a_name_outside_the_input_folder_is_refused(input_dir: Path) -> None:
    (input_dir.parent / "outside.wav").write_bytes(media_files.wav(0.1))
    with pytest.raises(ValueError, match="not a file in ComfyUI's input folder"):
        DarkroomLoadAudio.execute(audio="../outside.wav")

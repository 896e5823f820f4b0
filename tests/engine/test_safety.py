"""The safety checker's node, ops and tiny classifier, in-process: the real key layout, the verdicts,
the replacement, and what happens without the classifier's file."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from darkroom.formats.arch import ModelFileError
from darkroom.formats.safety import expected_keys, read_verdict, vit_shape
from darkroom.nodes.output import DarkroomSaveImage
from darkroom.nodes.safety import DarkroomSafetyChecker
from darkroom.ops.safety import blacken, classify, load_classifier

TINY = "tiny/nsfw-vit.safetensors"


@pytest.fixture(autouse=True)
def _outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The save node writes into a temporary output folder, not the shared ComfyUI tree's."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))


def _flat(*colour: float, size: int = 48) -> torch.Tensor:
    return torch.tensor(colour).view(1, 1, 1, 3).expand(1, size, size + 16, 3).clone()


def test_schema_ids_and_tooltips() -> None:
    schema = DarkroomSafetyChecker.define_schema()
    assert schema.node_id == "DarkroomSafetyChecker" and all(i.tooltip for i in schema.inputs)
    assert [o.io_type for o in schema.outputs] == ["IMAGE", "STRING"]
    save = DarkroomSaveImage.define_schema()
    assert all(i.tooltip for i in save.inputs) and "safety" in [i.id for i in save.inputs]


def test_the_tiny_classifier_has_the_real_layout_and_flags_magenta_only(models_dir: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    model = load_classifier(models_dir / "safety_checkers" / TINY)
    shape = vit_shape({k: tuple(v.shape) for k, v in model.state_dict().items()})
    reference = ViTForImageClassification(ViTConfig(**shape.config())).state_dict()
    assert set(reference) == expected_keys(shape.num_hidden_layers) == set(model.state_dict())
    assert shape.image_size == 224 and shape.patch_size == 16 and shape.num_labels == 2  # Falconsai's input
    images = torch.cat([_flat(1, 0, 1), _flat(0.95, 0.05, 0.9), _flat(1, 1, 1), _flat(1, 0.2, 0.8)])
    noise = torch.rand(3, 48, 64, 3, generator=torch.Generator().manual_seed(3))
    assert classify(model, torch.cat([images, noise])) == [True, True, False, False, False, False, False]


def test_flagged_images_become_black_and_the_others_stay_as_they_were() -> None:
    images = torch.rand(3, 8, 12, 3, generator=torch.Generator().manual_seed(1))
    out = blacken(images, [False, True, False])
    assert not out[1].any() and torch.equal(out[0], images[0]) and torch.equal(out[2], images[2])
    assert blacken(images, [False, False, False]) is images


def test_the_node_checks_and_the_save_node_describes_each_file(models_dir: Path) -> None:
    images = torch.cat([_flat(1, 0, 1), _flat(0.2, 0.5, 0.3)])
    checked, verdict = DarkroomSafetyChecker.execute(images, TINY).result
    assert read_verdict(verdict, 2) == ([True, False], None)
    assert not checked[0].any() and torch.equal(checked[1], images[1])
    saved = DarkroomSaveImage.execute(checked, "safety-test", "png", 95, verdict).ui["images"]
    assert [entry["has_nsfw_concept"] for entry in saved] == [True, False]


def test_without_the_file_nothing_is_checked_and_the_verdict_says_so(models_dir: Path) -> None:
    images = _flat(1, 0, 1)
    passed, verdict = DarkroomSafetyChecker.execute(images, "absent/nsfw.safetensors").result
    assert passed is images
    flags, note = read_verdict(verdict, 1)
    assert flags == [None] and "safety_checkers/absent/nsfw.safetensors) are absent" in (note or "")
    (saved,) = DarkroomSaveImage.execute(passed, "safety-test", "png", 95, verdict).ui["images"]
    assert saved["has_nsfw_concept"] is None and "absent" in saved["safety_note"]


def test_a_file_of_another_layout_is_refused_naming_it(models_dir: Path) -> None:
    vae = models_dir / "vae" / "tiny" / "flux2-vae.safetensors"
    with pytest.raises(ModelFileError, match="flux2-vae.safetensors"):
        load_classifier(vae)


def test_a_malformed_verdict_is_refused() -> None:
    with pytest.raises(ValueError, match="one boolean per image"):
        read_verdict(json.dumps({"nsfw": [True]}), 2)


def _loudness(video: dict, output_dir: Path) -> float:
    """The RMS of the saved mp4's decoded sound track (past AAC's priming, its first 1024 samples)."""
    path = output_dir / video["subfolder"] / video["filename"]
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(container.streams.audio[0])], 1)
    return float(np.sqrt(np.mean(samples[:, 1024:] ** 2)))


def test_a_video_is_one_verdict_from_its_sampled_frames_and_a_flagged_one_is_silent_too(
    models_dir: Path, tmp_path: Path
) -> None:
    from darkroom.nodes.output import DarkroomSaveVideo
    from darkroom.ops.safety import sampled_frames

    assert sampled_frames(10, 8) == [0, 1, 3, 4, 5, 6, 8, 9] and sampled_frames(5, 8) == [0, 1, 2, 3, 4]
    seconds = torch.arange(16000) / 16000  # a 440 Hz tone, longer than the frames' 10 / 16 s
    sound = {
        "waveform": (0.5 * torch.sin(2 * torch.pi * 440 * seconds)).expand(1, 2, -1),
        "sample_rate": 16000,
    }
    frames = _flat(0.2, 0.5, 0.3, size=16).expand(10, -1, -1, -1).clone()
    frames[9] = _flat(1, 0, 1, size=16)[0]  # sampled: the whole video goes black, its sound silent
    out, verdict = DarkroomSafetyChecker.execute(frames, TINY, 8).result
    assert read_verdict(verdict, 1) == ([True], None) and not out.any()
    (video,) = DarkroomSaveVideo.execute(out, 16.0, "safety-test", 19, verdict, sound).ui["images"]
    assert video["has_nsfw_concept"] is True and video["frames"] == 10
    assert _loudness(video, tmp_path) < 1e-3  # the audio stream is there, and silent
    frames[9], frames[2] = frames[0], _flat(1, 0, 1, size=16)[0]  # frame 2 is not among the 8 sampled
    out, verdict = DarkroomSafetyChecker.execute(frames, TINY, 8).result
    assert read_verdict(verdict, 1) == ([False], None) and out is frames
    (video,) = DarkroomSaveVideo.execute(out, 16.0, "safety-test", 19, verdict, sound).ui["images"]
    assert video["has_nsfw_concept"] is False and _loudness(video, tmp_path) > 0.2  # passed: sound kept

"""The tiny models are the manifest's bytes on every machine: built in-process here and again in a
process held to ATen's scalar kernels (what ARM and CPUs without AVX2 run), both match the recorded
sha256, and the umt5 tokenizer written without training splits prompts into whole words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import folder_paths
import sentencepiece
import torch
from darkroom.tiny import encoders, noise

from server.engine.models import load_manifest, sha256_of
from server.settings import PROJECT_ROOT


def _mismatches(directory: Path) -> dict[str, str]:
    manifest = load_manifest()
    generated = {name: e for name, e in manifest.models.items() if e.source.generated}
    assert len(generated) > 30 and all(e.sha256 for e in generated.values())
    return {
        name: sha256_of(directory / e.file) if (directory / e.file).exists() else "missing"
        for name, e in generated.items()
        if not (directory / e.file).exists() or sha256_of(directory / e.file) != e.sha256
    }


def test_the_in_process_build_is_the_manifests_bytes(models_dir: Path) -> None:
    assert _mismatches(models_dir) == {}


def test_a_build_on_atens_scalar_kernels_is_the_manifests_bytes(tmp_path: Path) -> None:
    root = Path(folder_paths.base_path)  # ComfyUI's tree, which the engine conftest put on sys.path
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "default",  # torch.randn's scalar Box-Muller rounds unlike the AVX2 one
        "PYTHONPATH": os.pathsep.join([str(root), str(PROJECT_ROOT / "custom_nodes")]),
    }
    command = [sys.executable, "-m", "darkroom.tiny", "--models-dir", str(tmp_path)]
    subprocess.run(command, env=env, cwd=root, check=True, capture_output=True, timeout=600)
    assert _mismatches(tmp_path) == {}


def test_noise_has_unit_variance_and_depends_on_the_seed_alone() -> None:
    x = noise.normal(7, (512, 512))
    assert x.dtype == torch.float32 and x.shape == (512, 512)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    assert torch.equal(x, noise.normal(7, (512, 512)))
    assert not torch.equal(x, noise.normal(8, (512, 512)))


def test_the_written_umt5_tokenizer_splits_prompts_into_words() -> None:
    sp = sentencepiece.SentencePieceProcessor(model_proto=encoders.spiece_model())
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    ids = sp.encode("a red cat under the tree")
    assert sp.id_to_piece(ids) == [
        "\u2581a",
        "\u2581red",
        "\u2581cat",
        "\u2581under",
        "\u2581the",
        "\u2581tree",
    ]
    unseen = "Zürich 42!"  # no such pieces: characters, then UTF-8 bytes (byte fallback), never <unk>
    assert sp.decode(sp.encode(unseen)) == unseen and sp.unk_id() not in sp.encode(unseen)

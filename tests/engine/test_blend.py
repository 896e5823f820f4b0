"""Model blends in-process on the tiny models: weights (1, 0) give the first model, (0.5, 0.5) the exact
tensor average, incompatible files fail naming the key and both files, and a repeated blend is a cache hit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths
import pytest
import safetensors.torch
import torch
from darkroom.formats import arch
from darkroom.nodes import extras as nodes_extras
from darkroom.ops import blend
from darkroom.tiny import diffusion as tiny

Blend = nodes_extras.DarkroomModelBlend
HIGH, LOW = "tiny/wan22-a14b-high-bf16.safetensors", "tiny/wan22-a14b-low-bf16.safetensors"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty blend cache and a private temp folder (ComfyUI's default lies in its source tree)."""
    monkeypatch.setattr(blend, "CACHE", blend.BlendCache())
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path))
    return tmp_path


def run(entries: list[tuple[str, float]], family: str = "wan", weight_dtype: str = "default") -> Any:
    models = json.dumps([{"model": m, "weight": w} for m, w in entries])
    return Blend.execute(models=models, family=family, weight_dtype=weight_dtype).args[0]


def eps(patcher: Any) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    x, context = torch.randn(1, 16, 2, 8, 8, generator=gen), torch.randn(1, 16, 64, generator=gen)
    comfy.model_management.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.apply_model(x, torch.tensor([0.7]), c_crossattn=context)


def weights(patcher: Any) -> dict[str, torch.Tensor]:
    return dict(patcher.model.diffusion_model.state_dict())


def test_weights_one_zero_give_the_first_model(models_dir: Path) -> None:
    high, low = run([(HIGH, 1.0)]), run([(LOW, 1.0)])
    assert torch.equal(eps(run([(HIGH, 2.0), (LOW, 0.0)])), eps(high))
    assert torch.equal(eps(run([(HIGH, 0.0), (LOW, 5.0)])), eps(low))
    assert not torch.equal(eps(high), eps(low))


def test_an_even_blend_is_the_tensor_average(models_dir: Path, fresh_cache: Path) -> None:
    mixed = run([(HIGH, 0.5), (LOW, 0.5)])
    high, low = weights(run([(HIGH, 1.0)])), weights(run([(LOW, 1.0)]))
    got = weights(mixed)
    assert got.keys() == high.keys()
    for key, tensor in got.items():
        # the files are bf16, so the blend is stored bf16; the model may hold some tensors as float32
        want = (high[key].float() * 0.5 + low[key].float() * 0.5).bfloat16().to(tensor.dtype)
        assert torch.equal(tensor, want), key
    out = eps(mixed)
    assert not torch.equal(out, eps(run([(HIGH, 1.0)]))) and not torch.equal(out, eps(run([(LOW, 1.0)])))
    assert list((fresh_cache / "darkroom-blend").iterdir()) == []  # the merged file is gone once loaded


def test_fp8_inputs_and_outputs(models_dir: Path) -> None:
    reference = eps(run([(HIGH, 0.3), (LOW, 0.7)]))
    stored_fp8 = run([("tiny/wan22-a14b-high-fp8_scaled.safetensors", 0.3), (LOW, 0.7)])
    assert float((eps(stored_fp8) - reference).norm() / reference.norm()) < 0.02
    served_fp8 = run([(HIGH, 0.3), (LOW, 0.7)], weight_dtype="fp8_e4m3fn_scaled")
    assert served_fp8.model.model_config.quant_config == {"mixed_ops": True}
    assert float((eps(served_fp8) - reference).norm() / reference.norm()) < 0.05


def test_incompatible_models_fail_naming_the_key_and_both_files(models_dir: Path) -> None:
    flux2, flux1 = "tiny/flux2-bf16.safetensors", "tiny/flux1-bf16.safetensors"
    models = json.dumps([{"model": flux2, "weight": 1}, {"model": flux1, "weight": 1}])
    with pytest.raises(blend.BlendMismatchError) as err:
        Blend.execute(models=models, family="flux", weight_dtype="default")
    message = str(err.value)
    folder = models_dir / "diffusion_models"
    assert message.startswith(f"cannot blend {folder / flux2} and {folder / flux1}: ")
    assert (
        "tensor 'double_blocks.0.img_attn.proj.bias' is in flux1-bf16.safetensors but not in flux2" in message
    )
    assert Blend.validate_inputs(models=models, family="flux") == message  # caught at queue time
    five_b = json.dumps([{"model": HIGH, "weight": 1}, {"model": "tiny/wan22-ti2v-5b-bf16.safetensors"}])
    assert (
        "tensor 'head.head.bias' is [64] in wan22-a14b-high-bf16.safetensors but [192] in wan22-ti2v-5b"
        in (Blend.validate_inputs(models=five_b, family="wan"))
    )
    wrong = Blend.validate_inputs(models=json.dumps([{"model": HIGH, "weight": 1}]), family="flux")
    assert "not a FLUX diffusion model: it looks like a Wan" in wrong
    assert "not in models/diffusion_models" in Blend.validate_inputs(
        models='[{"model": "nope.safetensors", "weight": 1}]', family="wan"
    )


def test_a_changed_shape_is_named(models_dir: Path, tmp_path: Path) -> None:
    sd = safetensors.torch.load_file(models_dir / "diffusion_models" / HIGH)
    sd["blocks.1.ffn.2.weight"] = sd["blocks.1.ffn.2.weight"][:, :128].contiguous()
    folder = models_dir / "diffusion_models" / "blend-test"
    folder.mkdir(exist_ok=True)
    safetensors.torch.save_file(sd, folder / "cut.safetensors")
    models = json.dumps([{"model": HIGH, "weight": 1}, {"model": "blend-test/cut.safetensors", "weight": 1}])
    message = Blend.validate_inputs(models=models, family="wan")
    assert (
        "tensor 'blocks.1.ffn.2.weight' is [128, 256] in wan22-a14b-high-bf16.safetensors but [128, 128] in"
        in (message)
    )


def test_a_repeated_blend_is_a_cache_hit(models_dir: Path) -> None:
    cache = blend.CACHE
    first = run([(HIGH, 0.4), (LOW, 0.6)])
    assert (cache.builds, cache.hits) == (1, 0)
    assert run([(HIGH, 0.4), (LOW, 0.6)]) is first  # same normalised weights hit too
    assert run([(HIGH, 2.0), (LOW, 3.0)]) is first
    assert (cache.builds, cache.hits) == (1, 2)
    models = json.dumps([{"model": HIGH, "weight": 0.4}, {"model": LOW, "weight": 0.6}])
    before = Blend.fingerprint_inputs(models=models, family="wan", weight_dtype="default")
    path = models_dir / "diffusion_models" / LOW
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert Blend.fingerprint_inputs(models=models, family="wan", weight_dtype="default") != before
        assert run([(HIGH, 0.4), (LOW, 0.6)]) is not first and cache.builds == 2
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_second_flux2_blends(models_dir: Path) -> None:
    config = arch.ArchConfig(arch.Family.FLUX, "flux2", tiny.FLUX2)
    other = models_dir / "diffusion_models" / "blend-test" / "flux2-other.safetensors"
    other.parent.mkdir(exist_ok=True)
    safetensors.torch.save_file(tiny.random_state_dict(config, "flux2-other"), other)
    mixed = run([("tiny/flux2-bf16.safetensors", 0.5), ("blend-test/flux2-other.safetensors", 0.5)], "flux")
    assert type(mixed.model.model_config).__name__ == "Flux2"

"""checkpoint.py: stored formats, quantise-on-load, strict key checks and file errors (no ComfyUI)."""

from __future__ import annotations

import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import pytest
import safetensors.torch
import torch
from darkroom.formats import arch, quant, safetensors_io
from darkroom.formats import checkpoint as ckpt

W = ckpt.WeightDtype
RULE = partial(arch.quantisable, arch.Family.FLUX)
QUANTISED = {
    "double_blocks.0.img_attn.qkv.weight",
    "double_blocks.0.img_mlp.0.weight",
    "single_blocks.0.linear1.weight",
}


def _model_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "img_in.weight": (32, 16),
        "img_in.bias": (32,),
        "double_blocks.0.img_attn.qkv.weight": (96, 32),
        "double_blocks.0.img_attn.qkv.bias": (96,),
        "double_blocks.0.img_attn.norm.query_norm.scale": (16,),
        "double_blocks.0.img_mlp.0.weight": (128, 32),
        "single_blocks.0.linear1.weight": (160, 32),
        "single_blocks.0.modulation.lin.bias": (96,),
        "final_layer.linear.weight": (16, 32),
    }
    return {k: (torch.randn(s, generator=gen) * 0.05).bfloat16() for k, s in shapes.items()}


def _write(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    ckpt.save_state_dict(path, sd, metadata)
    return path


def _load(
    path: Path, weight_dtype: ckpt.WeightDtype = W.DEFAULT, prefix: str = ""
) -> dict[str, torch.Tensor]:
    return ckpt.load_state_dict(path, ckpt.LoadPlan(weight_dtype, RULE), prefix)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)), key


def test_default_loads_a_bf16_file_as_stored(tmp_path: Path) -> None:
    sd = _model_sd()
    _same(_load(_write(tmp_path / "m.safetensors", sd)), sd)


@pytest.mark.parametrize(
    ("weight_dtype", "fmt", "scaled"),
    [
        (W.FP8_E4M3FN_SCALED, quant.Fp8Format.E4M3FN, True),
        (W.FP8_E5M2_SCALED, quant.Fp8Format.E5M2, True),
        (W.FP8_E4M3FN, quant.Fp8Format.E4M3FN, False),
        (W.FP8_E5M2, quant.Fp8Format.E5M2, False),
    ],
)
def test_quantise_on_load_equals_loading_a_prequantised_file(
    tmp_path: Path, weight_dtype: ckpt.WeightDtype, fmt: quant.Fp8Format, scaled: bool
) -> None:
    sd = _model_sd()
    on_load = _load(_write(tmp_path / "bf16.safetensors", sd), weight_dtype)
    stored = ckpt.quantise_state_dict(sd, fmt, scaled=scaled, quantisable=RULE)
    assert ("double_blocks.0.img_attn.qkv.weight_scale" in stored) is scaled  # plain fp8 files: bare weights
    _same(on_load, _load(_write(tmp_path / "fp8.safetensors", stored)))
    assert {k for k, t in on_load.items() if t.dtype == fmt.dtype} == QUANTISED
    for key in QUANTISED:
        layer = key.removesuffix(".weight")
        assert quant.parse_comfy_quant(on_load[f"{layer}.comfy_quant"]) == {"format": fmt.value}
        if not scaled:
            assert float(on_load[f"{layer}.weight_scale"]) == 1.0
    assert all(t.dtype == torch.bfloat16 for k, t in on_load.items() if k in sd and k not in QUANTISED)


def test_quantise_on_load_is_unchanged_by_release_chunking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loader works in 32 MB chunks, the second pass in reverse; 1000-byte chunks split every weight.
    sd = _model_sd()
    path = _write(tmp_path / "bf16.safetensors", sd)
    whole = _load(path, W.FP8_E4M3FN_SCALED)
    monkeypatch.setattr(safetensors_io, "RELEASE_CHUNK_BYTES", 1000)
    assert len(ckpt.read_header(path).tensors["single_blocks.0.linear1.weight"].chunks()) > 5
    _same(_load(path, W.FP8_E4M3FN_SCALED), whole)
    stored = ckpt.quantise_state_dict(sd, quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE)
    _same(whole, _load(_write(tmp_path / "fp8.safetensors", stored)))


def test_bf16_target_dequantises_a_scaled_file(tmp_path: Path) -> None:
    sd = _model_sd()
    stored = ckpt.quantise_state_dict(sd, quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE)
    out = _load(_write(tmp_path / "s.safetensors", stored), W.BF16)
    assert sorted(out) == sorted(sd) and all(t.dtype == torch.bfloat16 for t in out.values())
    for key in QUANTISED:
        assert float((out[key].float() - sd[key].float()).norm() / sd[key].float().norm()) < 0.035


def test_stored_fp8_is_kept_when_the_plain_variant_of_its_format_is_asked(tmp_path: Path) -> None:
    stored = ckpt.quantise_state_dict(_model_sd(), quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE)
    path = _write(tmp_path / "s.safetensors", stored)
    _same(_load(path, W.FP8_E4M3FN), _load(path))


def test_requantising_into_the_other_fp8_format_is_rejected(tmp_path: Path) -> None:
    stored = ckpt.quantise_state_dict(_model_sd(), quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE)
    path = _write(tmp_path / "e4.safetensors", stored)
    with pytest.raises(
        ckpt.CheckpointFormatError, match=r"e4\.safetensors: weights are stored as float8_e4m3fn.*round twice"
    ):
        _load(path, W.FP8_E5M2_SCALED)


def _legacy(sd: dict[str, torch.Tensor], marker_elems: int) -> dict[str, torch.Tensor]:
    """A pre-v0.4 scaled-fp8 file: `scaled_fp8` marker, `.scale_weight` and `.scale_input` per layer."""
    out = {k: v for k, v in sd.items() if k not in QUANTISED}
    for i, key in enumerate(sorted(QUANTISED)):
        layer = key.removesuffix(".weight")
        q, scale = quant.quantize_scaled(sd[key], quant.Fp8Format.E4M3FN)
        out |= {
            key: q,
            f"{layer}.scale_weight": scale.reshape(1),
            f"{layer}.scale_input": torch.tensor([1.0 + i]),
        }
    out["scaled_fp8"] = torch.zeros(marker_elems, dtype=torch.float8_e4m3fn)
    return out


@pytest.mark.parametrize("marker_elems", [0, 2])
def test_legacy_scale_weight_file_loads_in_current_format(tmp_path: Path, marker_elems: int) -> None:
    sd = _model_sd()
    path = _write(tmp_path / "legacy.safetensors", _legacy(sd, marker_elems))
    with ckpt.Checkpoint(ckpt.read_header(path)) as c:
        assert sorted(c.shapes()) == sorted(sd)  # side keys are not model keys
    out = _load(path)
    first = sorted(QUANTISED)[0].removesuffix(".weight")
    assert f"{first}.input_scale" not in out  # a 1.0 input scale is dropped, as convert_old_quants does
    for key in QUANTISED:
        layer = key.removesuffix(".weight")
        conf = quant.parse_comfy_quant(out[f"{layer}.comfy_quant"])
        assert conf["format"] == "float8_e4m3fn" and conf.get("full_precision_matrix_mult", False) is (
            marker_elems == 2
        )
        restored = quant.dequantize(out[key], out[f"{layer}.weight_scale"], torch.float32)
        assert float((restored - sd[key].float()).norm() / sd[key].float().norm()) < 0.035
    assert not any(k.endswith((".scale_weight", ".scale_input", "scaled_fp8")) for k in out)
    assert sum(k.endswith(".input_scale") for k in out) == 2


def test_quantization_metadata_header_format_loads(tmp_path: Path) -> None:
    stored = ckpt.quantise_state_dict(_model_sd(), quant.Fp8Format.E5M2, scaled=True, quantisable=RULE)
    layers = {
        k.removesuffix(".comfy_quant"): {"format": "float8_e5m2"}
        for k in stored
        if k.endswith(".comfy_quant")
    }
    bare = {k: v for k, v in stored.items() if not k.endswith(".comfy_quant")}
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    _same(
        _load(_write(tmp_path / "meta.safetensors", bare, meta)),
        _load(_write(tmp_path / "cq.safetensors", stored)),
    )


def test_unsupported_quant_format_is_named(tmp_path: Path) -> None:
    sd = _model_sd() | {"img_in.comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)}
    with pytest.raises(ckpt.CheckpointFormatError, match="'nvfp4'.*UNETLoader"):
        ckpt.Checkpoint(ckpt.read_header(_write(tmp_path / "n.safetensors", sd)))


def test_strict_check_reports_truncated_file_with_counts_and_examples(tmp_path: Path) -> None:
    full = _model_sd()
    cut = {k: v for k, v in full.items() if not k.startswith("single_blocks.")}
    expected = {k: tuple(v.shape) for k, v in full.items()}
    with (
        ckpt.Checkpoint(ckpt.read_header(_write(tmp_path / "cut.safetensors", cut))) as c,
        pytest.raises(ckpt.CheckpointMismatchError) as err,
    ):
        ckpt.check_keys(c.source, "flux2", expected, c.shapes())
    message = str(err.value)
    assert "cut.safetensors" in message and "flux2" in message
    assert "2 missing keys (e.g. single_blocks.0.linear1.weight" in message and "0 unexpected keys" in message
    assert err.value.missing == ["single_blocks.0.linear1.weight", "single_blocks.0.modulation.lin.bias"]


def test_strict_check_reports_wrong_family_and_shapes() -> None:
    expected = {"img_in.weight": (32, 16), "txt_in.weight": (32, 8), "final_layer.linear.weight": (16, 32)}
    found = {"img_in.weight": (32, 8), "head.modulation": (1, 2, 32), "blocks.0.ffn.0.weight": (64, 32)}
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        ckpt.check_keys("w.safetensors", "flux1-dev", expected, found)
    message = str(err.value)
    assert "2 missing keys (e.g. final_layer.linear.weight, txt_in.weight)" in message
    assert "2 unexpected keys (e.g. blocks.0.ffn.0.weight, head.modulation)" in message
    assert "1 shape mismatches (e.g. img_in.weight: file [32, 8] vs model [32, 16])" in message
    ckpt.check_keys("ok", "flux", expected, dict(expected))


def test_damaged_files_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", _model_sd())
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-100])
    with pytest.raises(
        ckpt.CheckpointFormatError, match=r"short\.safetensors: file is truncated.*re-download"
    ):
        ckpt.read_header(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ckpt.CheckpointFormatError, match=r"junk\.safetensors: not a safetensors file"):
        ckpt.read_header(tmp_path / "junk.safetensors")


def test_prefixed_checkpoint_keys_are_stripped_and_foreign_keys_ignored(tmp_path: Path) -> None:
    sd = _model_sd()
    full = {f"model.diffusion_model.{k}": v for k, v in sd.items()} | {"vae.decoder.w": torch.ones(2)}
    _same(_load(_write(tmp_path / "p.safetensors", full), prefix="model.diffusion_model."), sd)


def test_modules_are_yielded_whole_and_fp8_summary_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", _model_sd())
    plan = ckpt.LoadPlan(W.FP8_E4M3FN_SCALED, RULE)
    with ckpt.Checkpoint(ckpt.read_header(path)) as c:
        modules = dict(c.iter_modules(plan))
        quantised, floats = c.output_summary(plan)
    assert sorted(modules["double_blocks.0.img_attn.qkv"]) == [
        "bias",
        "comfy_quant",
        "weight",
        "weight_scale",
    ]
    assert sorted(modules["img_in"]) == ["bias", "weight"]
    assert quantised == 3 and list(floats) == [torch.bfloat16]


def test_saved_files_are_byte_identical(tmp_path: Path) -> None:
    stored = ckpt.quantise_state_dict(_model_sd(), quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE)
    a = _write(tmp_path / "a.safetensors", stored).read_bytes()
    b = _write(
        tmp_path / "b.safetensors",
        ckpt.quantise_state_dict(_model_sd(), quant.Fp8Format.E4M3FN, scaled=True, quantisable=RULE),
    ).read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert safetensors.torch.load(a).keys() == stored.keys()


def test_lower_layers_import_without_comfyui() -> None:
    assert not any(name == "comfy" or name.startswith(("comfy.", "comfy_api")) for name in sys.modules)

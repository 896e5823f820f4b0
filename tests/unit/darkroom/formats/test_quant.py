"""quant.py: fp8 round trips, scaled vs plain, saturation, chunking, comfy_quant entries (no ComfyUI)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from darkroom.formats import quant

E4M3, E5M2 = quant.Fp8Format.E4M3FN, quant.Fp8Format.E5M2


def _weights(n: int = 4096 * 64, std: float = 0.02, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen) * std).bfloat16().reshape(-1, 64)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("fmt", "bound"), [(E4M3, 0.035), (E5M2, 0.07)])
def test_scaled_round_trip_error_is_within_the_formats_mantissa(fmt: quant.Fp8Format, bound: float) -> None:
    # Measured 0.0266 (e4m3fn, 3 mantissa bits) and 0.0526 (e5m2, 2 bits) on N(0, 0.02) weights.
    w = _weights()
    q, scale = quant.quantize_scaled(w, fmt)
    assert q.dtype == fmt.dtype and q.shape == w.shape and scale.dtype == torch.float32 and scale.ndim == 0
    assert float(scale) == pytest.approx(quant.absmax(w) / fmt.max_value)
    assert _rel_err(quant.dequantize(q, scale, torch.bfloat16), w) < bound


def test_scaled_beats_plain_e4m3fn_on_small_weights() -> None:
    # Weights of std 0.002 sit in e4m3fn's subnormal range unscaled (measured error 0.28 plain, 0.026 scaled).
    w = _weights(std=0.002)
    plain = quant.dequantize(quant.quantize(w, E4M3), None, torch.float32)
    q, scale = quant.quantize_scaled(w, E4M3)
    scaled = quant.dequantize(q, scale, torch.float32)
    assert _rel_err(scaled, w) < 0.035 < 0.1 < _rel_err(plain, w)


def test_scaled_maps_absmax_onto_the_largest_fp8_value() -> None:
    w = _weights()
    q, _ = quant.quantize_scaled(w, E4M3)
    assert float(q.float().abs().max()) == E4M3.max_value


def test_plain_cast_saturates_instead_of_producing_nan() -> None:
    w = torch.tensor([1000.0, -1000.0, 1.0, 0.0], dtype=torch.bfloat16)
    q = quant.quantize(w, E4M3)
    assert q.float().tolist() == [448.0, -448.0, 1.0, 0.0]


def test_quantise_matches_reference_formula_across_chunk_boundaries() -> None:
    n = quant.CHUNK_ELEMS + 777
    w = (torch.randn(n, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    q, scale = quant.quantize_scaled(w, E5M2)
    reference = (w.float() * (1.0 / float(scale))).to(torch.float8_e5m2)
    assert torch.equal(q.view(torch.uint8), reference.view(torch.uint8))


def test_exactly_representable_values_survive_unchanged() -> None:
    values = torch.tensor([0.0, 0.5, -2.0, 448.0, 0.001953125], dtype=torch.float32)  # last = 2**-9 subnormal
    q = quant.quantize(values, E4M3)
    assert torch.equal(quant.dequantize(q, None, torch.float32), values)


def test_zero_tensor_gets_unit_scale() -> None:
    q, scale = quant.quantize_scaled(torch.zeros(8, 8, dtype=torch.bfloat16), E4M3)
    assert float(scale) == 1.0 and not q.float().any()


def test_fp16_source_and_fp32_destination() -> None:
    w = _weights().half()
    q, scale = quant.quantize_scaled(w, E4M3)
    out = quant.dequantize(q, scale, torch.float32)
    assert out.dtype == torch.float32 and _rel_err(out, w) < 0.035


def test_dequantize_rejects_non_fp8() -> None:
    with pytest.raises(ValueError, match="fp8"):
        quant.dequantize(torch.ones(2), None)


def test_format_lookup() -> None:
    assert quant.Fp8Format.from_dtype(torch.float8_e5m2) is E5M2
    assert E4M3.max_value == 448.0 and E5M2.max_value == 57344.0
    with pytest.raises(ValueError, match="bfloat16"):
        quant.Fp8Format.from_dtype(torch.bfloat16)


def test_comfy_quant_entry_is_comfyuis_json_bytes() -> None:
    # ComfyUI writes torch.tensor(list(json.dumps(conf).encode()), dtype=uint8) (comfy/ops.py, utils.py).
    entry = quant.comfy_quant_entry(E4M3)
    assert entry.dtype == torch.uint8
    assert entry.numpy().tobytes() == json.dumps({"format": "float8_e4m3fn"}).encode()
    assert quant.parse_comfy_quant(quant.comfy_quant_entry(E5M2, full_precision_mm=True)) == {
        "format": "float8_e5m2",
        "full_precision_matrix_mult": True,
    }
    bare = torch.tensor(list(b'"float8_e4m3fn"'), dtype=torch.uint8)
    assert quant.parse_comfy_quant(bare) == {"format": "float8_e4m3fn"}


def test_lower_layer_imports_without_comfyui() -> None:
    assert not any(name == "comfy" or name.startswith(("comfy.", "comfy_api")) for name in sys.modules)

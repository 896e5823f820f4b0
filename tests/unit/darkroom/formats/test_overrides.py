"""Override inputs without ComfyUI: LoRA stacks, blends and sigma lists parse, and bad ones fail with the
entry named."""

from __future__ import annotations

import pytest
from darkroom.formats.overrides import (
    BlendSpec,
    Expert,
    LoraSpec,
    OverrideError,
    check_file_name,
    parse_blend,
    parse_lora_stack,
    parse_sigmas,
)


def test_lora_stack_parses_with_defaults() -> None:
    specs = parse_lora_stack(
        '[{"path": "a.safetensors"}, {"path": "cache/b.safetensors", "scale": 0.5, '
        '"text_encoder_scale": 0, "expert": "low"}]'
    )
    assert specs == [
        LoraSpec("a.safetensors"),
        LoraSpec("cache/b.safetensors", 0.5, 0.0, Expert.LOW),
    ]
    assert specs[0].te_scale == 1.0 and specs[1].te_scale == 0.0
    assert parse_lora_stack("") == [] and parse_lora_stack(" [] ") == []


def test_expert_matching() -> None:
    low = LoraSpec("x", expert=Expert.LOW)
    assert low.applies_to(Expert.LOW) and not low.applies_to(Expert.HIGH) and low.applies_to(Expert.BOTH)
    assert LoraSpec("x").applies_to(Expert.HIGH)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"path": "a"}', "must be a JSON list"),
        ('["a.safetensors"]', "loras\\[0\\]: expected an object"),
        ('[{"path": "a", "weight": 1}]', "unknown keys \\['weight'\\]"),
        ('[{"path": "a", "scale": "1"}]', "loras\\[0\\].scale: expected a number"),
        ('[{"path": "a", "scale": 1000}]', "outside"),
        ('[{"path": "a", "expert": "mid"}]', "not one of high, low, both"),
        ('[{"path": "/etc/passwd"}]', "not a plain relative file name"),
        ('[{"path": "../x.safetensors"}]', "not a plain relative file name"),
        ('[{"path": "cache/../../x"}]', "not a plain relative file name"),
        ('[{"path": "C:/x"}]', "not a plain relative file name"),
        ('[{"scale": 1}]', "loras\\[0\\].path: expected a file name"),
    ],
)
def test_bad_lora_stacks_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        parse_lora_stack(text)


def test_lora_stack_cap() -> None:
    three = '[{"path": "a"}, {"path": "b"}, {"path": "c"}]'
    assert len(parse_lora_stack(three, max_loras=3)) == 3
    with pytest.raises(OverrideError, match="3 entries, at most 2"):
        parse_lora_stack(three, max_loras=2)


def test_file_names() -> None:
    assert check_file_name("tiny/a.safetensors", "x") == "tiny/a.safetensors"
    for bad in ["", "a//b", "a\\b", "~/a", "./a", "a\nb", None]:
        with pytest.raises(OverrideError):
            check_file_name(bad, "x")


def test_blend_weights_are_normalised() -> None:
    specs = parse_blend('[{"model": "a.safetensors", "weight": 3}, {"model": "b.safetensors", "weight": 1}]')
    assert specs == [BlendSpec("a.safetensors", 0.75), BlendSpec("b.safetensors", 0.25)]
    for text, message in [
        ("[]", "0 entries"),
        ('[{"model": "a", "weight": -1}]', "negative"),
        ('[{"model": "a", "weight": 0}]', "sum to 0"),
        ('[{"model": "a", "w": 1}]', "expected an object with model and weight"),
    ]:
        with pytest.raises(OverrideError, match=message):
            parse_blend(text)


def test_sigmas() -> None:
    assert parse_sigmas("") is None
    assert parse_sigmas("[1, 0.5, 0]") == [1.0, 0.5, 0.0]
    for text, message in [
        ("[1.0]", "1 values"),
        ("[1.0, 0.1]", "last value must be 0"),
        ("[1.0, 1.0, 0]", "strictly descend"),
        ("[0.5, 0.7, 0]", "sigmas\\[1\\] = 0.7 follows 0.5"),
        ('[1, "x", 0]', "sigmas\\[1\\]: expected a number"),
    ]:
        with pytest.raises(OverrideError, match=message):
            parse_sigmas(text)

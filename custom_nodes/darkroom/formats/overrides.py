"""The JSON and list inputs of the extras nodes, parsed and checked without ComfyUI: LoRA stacks, model
blends and explicit sigma schedules. Errors name the entry that is wrong and show a valid one."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_MAX_LORAS = 8  # the DarkroomLoraStack `max_loras` input's default
MAX_LORAS_LIMIT = 64  # the highest `max_loras` the node accepts
MAX_BLEND_MODELS = 8
MAX_SCALE = 100.0  # |scale| bound, as ComfyUI's LoraLoader strength inputs
MAX_SIGMAS = 10001  # 10000 steps, the bound of ComfyUI's BasicScheduler
_LORA_EXAMPLE = '[{"path": "my-style.safetensors", "scale": 0.8}]'
_BLEND_EXAMPLE = '[{"model": "a.safetensors", "weight": 0.7}, {"model": "b.safetensors", "weight": 0.3}]'
_SIGMAS_EXAMPLE = "[1.0, 0.75, 0.45, 0.2, 0.0]"


class OverrideError(ValueError):
    """An override input that cannot be used; the message says which entry and how to fix it."""

    code = "invalid_override"


class Expert(StrEnum):
    """Which Wan 2.2 A14B expert a LoRA (or a stack node) is for; `both` also serves one-model families."""

    HIGH = "high"
    LOW = "low"
    BOTH = "both"


@dataclass(frozen=True)
class LoraSpec:
    """One entry of a LoRA stack."""

    path: str
    scale: float = 1.0
    text_encoder_scale: float | None = None  # None: the same as `scale`
    expert: Expert = Expert.BOTH

    @property
    def te_scale(self) -> float:
        return self.scale if self.text_encoder_scale is None else self.text_encoder_scale

    def applies_to(self, expert: Expert) -> bool:
        """Whether a stack node serving `expert` applies this entry (a `both` node applies every entry)."""
        return expert is Expert.BOTH or self.expert in (Expert.BOTH, expert)


@dataclass(frozen=True)
class BlendSpec:
    """One model of a blend; `weight` is normalised so a blend's weights sum to 1."""

    model: str
    weight: float


def check_file_name(name: object, what: str) -> str:
    """A relative file name inside a models folder (subfolders allowed); OverrideError for anything that
    could leave it: absolute paths, drive letters, `..`, backslashes, empty parts or control characters."""
    if not isinstance(name, str) or not name.strip():
        raise OverrideError(f"{what}: expected a file name in the models folder, got {name!r}")
    parts = name.split("/")
    if (
        name.startswith(("/", "~"))
        or "\\" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in name)
    ):
        raise OverrideError(
            f"{what}: {name!r} is not a plain relative file name; name a file inside the folder, "
            f"e.g. 'my-style.safetensors' or 'cache/my-style.safetensors'"
        )
    return name


def _number(value: Any, what: str, *, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OverrideError(f"{what}: expected a number, got {value!r}")
    if abs(value) > bound:
        raise OverrideError(f"{what}: {value} is outside [-{bound:g}, {bound:g}]")
    return float(value)


def _json_list(text: str | None, what: str, example: str) -> list[Any]:
    if text is None or not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise OverrideError(f"{what} is not valid JSON ({e}); write e.g. {example}") from e
    if not isinstance(value, list):
        raise OverrideError(f"{what} must be a JSON list, e.g. {example}; got {type(value).__name__}")
    return value


def _lora_entry(index: int, entry: Any) -> LoraSpec:
    what = f"loras[{index}]"
    if not isinstance(entry, dict):
        raise OverrideError(f"{what}: expected an object like {_LORA_EXAMPLE[1:-1]}, got {entry!r}")
    unknown = sorted(set(entry) - {"path", "scale", "text_encoder_scale", "expert"})
    if unknown:
        raise OverrideError(f"{what}: unknown keys {unknown}; valid: path, scale, text_encoder_scale, expert")
    te_scale = entry.get("text_encoder_scale")
    expert = entry.get("expert", Expert.BOTH.value)
    if expert not in {e.value for e in Expert}:
        raise OverrideError(f"{what}.expert: {expert!r} is not one of high, low, both")
    return LoraSpec(
        path=check_file_name(entry.get("path"), f"{what}.path"),
        scale=_number(entry.get("scale", 1.0), f"{what}.scale", bound=MAX_SCALE),
        text_encoder_scale=None
        if te_scale is None
        else _number(te_scale, f"{what}.text_encoder_scale", bound=MAX_SCALE),
        expert=Expert(expert),
    )


def parse_lora_stack(text: str | None, max_loras: int = DEFAULT_MAX_LORAS) -> list[LoraSpec]:
    """The `loras` input (empty or `[]` = none) as specs, at most `max_loras` of them."""
    entries = _json_list(text, "loras", _LORA_EXAMPLE)
    if len(entries) > max_loras:
        raise OverrideError(f"loras: {len(entries)} entries, at most {max_loras} are allowed (max_loras)")
    return [_lora_entry(i, entry) for i, entry in enumerate(entries)]


def parse_blend(text: str | None, max_models: int = MAX_BLEND_MODELS) -> list[BlendSpec]:
    """The `models` input of a blend: 1..max_models entries, weights >= 0 normalised to sum to 1."""
    entries = _json_list(text, "models", _BLEND_EXAMPLE)
    if not 1 <= len(entries) <= max_models:
        raise OverrideError(f"models: {len(entries)} entries; give 1 to {max_models}, e.g. {_BLEND_EXAMPLE}")
    raw: list[tuple[str, float]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"model", "weight"}:
            raise OverrideError(f"models[{i}]: expected an object with model and weight, got {entry!r}")
        weight = _number(entry.get("weight", 1.0), f"models[{i}].weight", bound=1e6)
        if weight < 0:
            raise OverrideError(f"models[{i}].weight: {weight} is negative; weights must be >= 0")
        raw.append((check_file_name(entry.get("model"), f"models[{i}].model"), weight))
    total = sum(w for _, w in raw)
    if total <= 0:
        raise OverrideError("models: the weights sum to 0; give at least one model a positive weight")
    return [BlendSpec(name, weight / total) for name, weight in raw]


def parse_sigmas(text: str | None) -> list[float] | None:
    """An explicit schedule (empty = none): 2+ finite numbers, strictly descending, the last exactly 0."""
    values = _json_list(text, "sigmas", _SIGMAS_EXAMPLE)
    if not values:
        return None
    sigmas = [_number(v, f"sigmas[{i}]", bound=1e4) for i, v in enumerate(values)]
    if not 2 <= len(sigmas) <= MAX_SIGMAS:
        raise OverrideError(f"sigmas: {len(sigmas)} values; give 2 to {MAX_SIGMAS}, e.g. {_SIGMAS_EXAMPLE}")
    if sigmas[-1] != 0.0:
        raise OverrideError(f"sigmas: the last value must be 0 (fully denoised), got {sigmas[-1]}")
    for i in range(1, len(sigmas)):
        if not sigmas[i] < sigmas[i - 1]:
            raise OverrideError(
                f"sigmas: values must strictly descend; sigmas[{i}] = {sigmas[i]} follows {sigmas[i - 1]}"
            )
    return sigmas

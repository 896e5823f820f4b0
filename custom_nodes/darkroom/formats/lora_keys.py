"""LoRA key formats (no ComfyUI): read ComfyUI, kohya and diffusers/PEFT LoRAs for FLUX.2, FLUX.1 and Wan
into ComfyUI's own format, and render a ComfyUI-format LoRA in the other two.

ComfyUI v0.8.0 maps `diffusion_model.<key>`, `lora_unet_<key_with_underscores>` and FLUX.1's diffusers
names (comfy/lora.py:175, :255), but not FLUX.2's or Wan's diffusers names. Here every spelling is looked
up in tables built from the model's own state-dict keys (lora_names.py), so names follow the model's depth
and widths. LoRAs on bands of a fused weight (diffusers' to_q/to_k/to_v) are fused back into one exact
LoRA on it: a shared down stays shared, otherwise the up is block-diagonal over the stacked downs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from .arch import Shape
from .lora_names import Target, diffusers_names, module_names, underscored

COMFY_PREFIX = "diffusion_model."
UP, DOWN, ALPHA = ".lora_up.weight", ".lora_down.weight", ".alpha"
# offsets of a 1-D weight (a norm's scale) and of a bias, as ComfyUI's trainer saves them
DIFF, DIFF_B = ".diff", ".diff_b"
PEFT_BIAS = ".lora_B.bias"  # PEFT's lora_bias (diffusers reads it): the bias offset of a LoRA'd layer
_UP_SPELLINGS = (UP, ".lora_B.weight", ".lora_B.default.weight", ".lora.up.weight", "_lora.up.weight",
                 ".lora_linear_layer.up.weight", ".lora_B")  # fmt: skip
_DOWN_SPELLINGS = (DOWN, ".lora_A.weight", ".lora_A.default.weight", ".lora.down.weight", "_lora.down.weight",
                   ".lora_linear_layer.down.weight", ".lora_A")  # fmt: skip
# Other adapter tensors ComfyUI reads (comfy/lora.py load_lora, comfy/weight_adapter): kept as they are.
_OTHER_SUFFIXES = (
    ALPHA, ".dora_scale", ".lora_mid.weight", ".reshape_weight", ".diff", ".diff_b", ".set_weight",
    ".w_norm", ".b_norm", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".oft_blocks", ".rescale",
)  # fmt: skip
_CANONICAL = (
    {s: UP for s in _UP_SPELLINGS}
    | {s: DOWN for s in _DOWN_SPELLINGS}
    | {s: s for s in _OTHER_SUFFIXES}
    | {PEFT_BIAS: DIFF_B}
)
_SUFFIXES = sorted(_CANONICAL, key=len, reverse=True)  # longest first: ".lora_B.weight" before ".lora_B"
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te1.", "te2.")


class LoraFormat(StrEnum):
    """How a LoRA names the diffusion model's layers."""

    COMFY = "comfyui"  # diffusion_model.<key>.lora_up.weight / lora_down.weight / alpha
    KOHYA = "kohya"  # lora_unet_<key_with_underscores>.lora_up.weight
    DIFFUSERS = "diffusers"  # transformer.<diffusers name>.lora_A.weight / lora_B.weight
    PEFT = "peft"  # base_model.model.<diffusers name>.lora_A.weight


# (prefix, format, names looked up with underscores); longest prefixes first
_PREFIXES: tuple[tuple[str, LoraFormat, bool], ...] = (
    ("base_model.model.transformer.", LoraFormat.PEFT, False),
    ("model.diffusion_model.", LoraFormat.COMFY, False),
    ("lora_transformer_", LoraFormat.KOHYA, True),
    ("base_model.model.", LoraFormat.PEFT, False),
    ("diffusion_model.", LoraFormat.COMFY, False),
    ("transformer.", LoraFormat.DIFFUSERS, False),
    ("lora_unet_", LoraFormat.KOHYA, True),
    ("lycoris_", LoraFormat.KOHYA, True),
    ("unet.", LoraFormat.DIFFUSERS, False),
    ("", LoraFormat.COMFY, False),
)


@dataclass
class Conversion:
    """A LoRA in ComfyUI's format plus what did not convert (source key names)."""

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusion_model.* keys only
    text_encoder: dict[str, torch.Tensor] = field(default_factory=dict)  # left for ComfyUI's TE key map
    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    formats: set[LoraFormat] = field(default_factory=set)


def split_suffix(key: str) -> tuple[str, str] | None:
    """(layer name, adapter suffix) of a LoRA key, or None when the suffix is unknown."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


@dataclass(frozen=True)
class KeyTables:
    """Every accepted spelling of the model's layers, built once per model."""

    dotted: dict[str, Target]
    flat: dict[str, Target]
    shapes: Mapping[str, Shape]

    @classmethod
    def build(cls, shapes: Mapping[str, Shape]) -> KeyTables:
        ours, theirs = module_names(shapes), diffusers_names(shapes)
        dotted = theirs | ours  # our own names win where both spell the same thing
        return cls(dotted, underscored(theirs) | underscored(ours), shapes)

    def resolve(self, name: str) -> tuple[Target, LoraFormat] | None:
        """What a layer name (suffix removed) patches, and the format its prefix says."""
        for prefix, fmt, flat in _PREFIXES:
            if name.startswith(prefix):
                target = (self.flat if flat else self.dotted).get(name[len(prefix) :])
                if target is not None:
                    return target, fmt
        return None

    def weight_shape(self, module: str) -> Shape | None:
        return self.shapes.get(f"{module}.weight", self.shapes.get(module))


def is_text_encoder_key(key: str) -> bool:
    return key.startswith(_TEXT_ENCODER_PREFIXES)


@dataclass
class _Part:
    """One source layer of a LoRA: what it patches and its tensors under canonical suffixes."""

    target: Target
    fmt: LoraFormat
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    @property
    def is_lora(self) -> bool:
        return UP in self.tensors and DOWN in self.tensors

    def alpha(self) -> float | None:
        return float(self.tensors[ALPHA]) if ALPHA in self.tensors else None


def _fits(part: _Part, shape: Shape | None, rows: int) -> bool:
    """Whether up @ down has the shape of `rows` rows of a weight shaped `shape`."""
    if not part.is_lora or ".lora_mid.weight" in part.tensors:
        return True  # other adapters (LoHa, LoKr, diff, ...) are checked by ComfyUI when applied
    up, down = part.tensors[UP], part.tensors[DOWN]
    return (
        shape is not None
        and up.shape[0] == rows
        and up.ndim >= 2
        and down.shape[0] == up.shape[1]
        and down[0].numel() == math.prod(shape[1:])
    )


def _reject(conv: Conversion, part: _Part, why: str) -> None:
    conv.unmatched.extend(part.keys)
    conv.problems.append(f"{part.keys[0].rsplit('.', 2)[0]}: {why}")


def _accept(conv: Conversion, part: _Part, tensors: Mapping[str, torch.Tensor], module: str) -> None:
    conv.state_dict |= {f"{COMFY_PREFIX}{module}{suffix}": t for suffix, t in tensors.items()}
    conv.matched.extend(part.keys)
    conv.formats.add(part.fmt)


def _shape_problem(part: _Part, shape: Shape | None, rows: int) -> str:
    up, down = part.tensors[UP], part.tensors[DOWN]
    return (
        f"LoRA delta {up.shape[0]} x {down[0].numel()} does not fit {rows} rows of "
        f"{part.target.module} {list(shape or [])}"
    )


def _fuse(parts: list[_Part], rows_total: int) -> dict[str, torch.Tensor]:
    """One LoRA on the whole fused weight from LoRAs on bands of its rows (exact), with the bands' bias
    offsets (zero where a band has none)."""
    out = _fuse_lora(parts, rows_total)
    if any(DIFF_B in p.tensors for p in parts):
        dtype = next(p.tensors[DIFF_B] for p in parts if DIFF_B in p.tensors).dtype
        bias = torch.zeros(rows_total, dtype=dtype)
        for p in parts:
            if DIFF_B in p.tensors:
                first, n = p.target.rows or (0, rows_total)
                bias[first : first + n] = _halves(p.tensors[DIFF_B], p.target.swap_halves)
        out[DIFF_B] = bias
    return out


def _halves(t: torch.Tensor, swap: bool) -> torch.Tensor:
    """diffusers' (scale, shift) rows as BFL's (shift, scale) and back (the same swap both ways)."""
    return torch.cat(t.chunk(2)[::-1]) if swap else t


def _fuse_lora(parts: list[_Part], rows_total: int) -> dict[str, torch.Tensor]:
    ups = []
    for p in parts:
        up = p.tensors[UP]
        ups.append(torch.cat(up.chunk(2)[::-1]) if p.target.swap_halves else up)
    bands = [p.target.rows or (0, rows_total) for p in parts]
    downs, alphas = [p.tensors[DOWN] for p in parts], [p.alpha() for p in parts]
    if all(torch.equal(d, downs[0]) and a == alphas[0] for d, a in zip(downs, alphas, strict=True)):
        up = torch.zeros((rows_total, *ups[0].shape[1:]), dtype=ups[0].dtype)
        for (first, n), part_up in zip(bands, ups, strict=True):
            up[first : first + n] = part_up
        out = {UP: up, DOWN: downs[0]}
        return out | ({ALPHA: parts[0].tensors[ALPHA]} if alphas[0] is not None else {})
    ranks = [d.shape[0] for d in downs]  # different downs: block-diagonal up, scales folded in
    up = torch.zeros((rows_total, sum(ranks), *ups[0].shape[2:]), dtype=torch.float32)
    column = 0
    for (first, n), part_up, rank, alpha in zip(bands, ups, ranks, alphas, strict=True):
        scale = 1.0 if alpha is None else alpha / rank
        up[first : first + n, column : column + rank] = part_up.float() * scale
        column += rank
    down = torch.cat([d.float() for d in downs])
    return {UP: up, DOWN: down, ALPHA: torch.tensor(float(sum(ranks)))}


def _convert_module(conv: Conversion, module: str, parts: list[_Part], tables: KeyTables) -> None:
    shape = tables.weight_shape(module)
    rows = shape[0] if shape else 0
    whole = [p for p in parts if p.target.rows is None and not p.target.swap_halves]
    banded = [p for p in parts if p not in whole]
    for extra in whole[1:] + (banded if whole else []):
        _reject(conv, extra, f"patches {module} a second time under another name")
    if whole:
        part = whole[0]
        if (UP in part.tensors) != (DOWN in part.tensors):
            _reject(conv, part, "has only one of lora_up / lora_down; the file is incomplete")
        elif _fits(part, shape, rows):
            _accept(conv, part, part.tensors, module)
        else:
            _reject(conv, part, _shape_problem(part, shape, rows))
        return
    if any(not p.is_lora or set(p.tensors) - {UP, DOWN, ALPHA, DIFF_B} for p in banded):
        for part in banded:
            _reject(conv, part, f"only plain LoRA (up/down) layers can patch a band of fused {module}")
        return
    misfits = [p for p in banded if not _fits(p, shape, p.target.rows[1] if p.target.rows else rows)]
    if misfits:
        for part in banded:
            _reject(conv, part, _shape_problem(misfits[0], shape, rows))
        return
    fused = _fuse(banded, rows)
    for part in banded:
        _accept(conv, part, fused, module)


def to_comfy(lora: Mapping[str, torch.Tensor], tables: KeyTables) -> Conversion:
    """A LoRA in any supported naming as ComfyUI-format `diffusion_model.*` keys for this model."""
    conv = Conversion()
    parts: dict[str, _Part] = {}
    for key, tensor in lora.items():
        if is_text_encoder_key(key):
            conv.text_encoder[key] = tensor
            continue
        split = split_suffix(key)
        resolved = tables.resolve(split[0]) if split else None
        if split is None or resolved is None:
            conv.unmatched.append(key)
            continue
        part = parts.setdefault(split[0], _Part(*resolved))
        part.tensors[_CANONICAL[split[1]]] = tensor
        part.keys.append(key)
    by_module: dict[str, list[_Part]] = {}
    for name in sorted(parts):
        by_module.setdefault(parts[name].target.module, []).append(parts[name])
    for module, group in by_module.items():
        _convert_module(conv, module, group, tables)
    return conv


def _layers(comfy_sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in comfy_sd.items():
        split = split_suffix(key)
        if split is None or not split[0].startswith(COMFY_PREFIX):
            raise ValueError(f"{key!r} is not a ComfyUI-format diffusion-model LoRA key")
        out.setdefault(split[0][len(COMFY_PREFIX) :], {})[split[1]] = tensor
    return out


def _band(t: torch.Tensor, target: Target) -> torch.Tensor:
    t = _halves(t, target.swap_halves)
    return t if target.rows is None else t[target.rows[0] : target.rows[0] + target.rows[1]]


def _render_diffusers(
    layer: Mapping[str, torch.Tensor], names: list[tuple[str, Target]], prefix: str
) -> dict[str, torch.Tensor]:
    """A layer's LoRA as lora_A/lora_B per diffusers name, its bias offset as PEFT's lora_B.bias (or, on a
    layer without a LoRA, .diff_b) and a 1-D weight's offset (a norm's) as .diff, which darkroom's and
    ComfyUI's loaders read; clones throughout: safetensors refuses shared storage."""
    out: dict[str, torch.Tensor] = {}
    for name, target in names:
        if DIFF in layer:
            out[f"{prefix}{name}{DIFF}"] = _band(layer[DIFF], target).clone()
        if DIFF_B in layer:
            suffix = PEFT_BIAS if UP in layer else DIFF_B
            out[f"{prefix}{name}{suffix}"] = _band(layer[DIFF_B], target).clone()
    if UP not in layer:
        return out
    up, down = layer[UP], layer[DOWN]
    scale = float(layer[ALPHA]) / down.shape[0] if ALPHA in layer else 1.0
    if scale != 1.0:  # diffusers files keep alpha in adapter metadata, not tensors: fold it into B
        up = (up.float() * scale).to(up.dtype)
    for name, target in names:
        out[f"{prefix}{name}.lora_A.weight"] = down.clone()
        out[f"{prefix}{name}.lora_B.weight"] = _band(up, target).clone()
    return out


def render(
    comfy_sd: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape], fmt: LoraFormat
) -> dict[str, torch.Tensor]:
    """A ComfyUI-format LoRA spelled as `fmt` for the model with these shapes (tools and tests)."""
    layers = _layers(comfy_sd)
    if fmt is LoraFormat.COMFY:
        return dict(comfy_sd)
    if fmt is LoraFormat.KOHYA:
        return {
            f"lora_unet_{module.replace('.', '_')}{suffix}": tensor
            for module, layer in layers.items()
            for suffix, tensor in layer.items()
        }
    reverse: dict[str, list[tuple[str, Target]]] = {}
    for name, target in diffusers_names(shapes).items():
        reverse.setdefault(target.module, []).append((name, target))
    prefix = "transformer." if fmt is LoraFormat.DIFFUSERS else "base_model.model."
    out: dict[str, torch.Tensor] = {}
    for module, layer in sorted(layers.items()):
        plain = (UP in layer) == (DOWN in layer) and not set(layer) - {UP, DOWN, ALPHA, DIFF, DIFF_B}
        if not plain or module not in reverse:
            raise ValueError(
                f"{module}: only LoRA layers and bias/norm offsets with a diffusers name render as "
                f"{fmt.value}"
            )
        out |= _render_diffusers(layer, reverse[module], prefix)
    return out

"""Tiny text encoders and VAEs for FLUX.2, FLUX.1, Wan, Z-Image, SD3 and Qwen-Image: ComfyUI's own classes at
test widths.

Every tensor comes from ComfyUI's model classes (so the key layouts are the real ones) and is filled from a
generator seeded by its name, so a rebuild writes the same bytes. The tokenizers live inside the files as
ComfyUI expects them: a synthetic tekken vocabulary (`tekken_model`) for Mistral-3 and a sentencepiece model
written here (`spiece_model`) for umt5; CLIP-L, CLIP-G, T5, Qwen3 and Qwen2.5-VL use the tokenizers ComfyUI
ships (Qwen2.5-VL keeps the real 152,064-token vocabulary). Widths agreed with the diffusion models: FLUX.2
context 3 x 64, FLUX.1 context 64 and pooled 64, Wan text 64, Z-Image caption 64, SD3 pooled 64 + 64 (CLIP-L,
CLIP-G; its context is padded to 4096 by the encoder). Z-Image's VAE is FLUX.1's (16 channels at /8);
Qwen-Image's (joint attention 32) is the Wan 2.1 VAE (wan21-vae).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import comfy.clip_model
import comfy.ldm.wan.vae
import comfy.ldm.wan.vae2_2
import comfy.ops
import comfy.text_encoders.llama
import comfy.text_encoders.qwen_vl
import comfy.text_encoders.t5
import safetensors.torch
import sentencepiece
import torch
from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model

from ..ops.vae import kl_autoencoder
from .noise import normal

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

HIDDEN = 64  # every tiny text encoder's width
MISTRAL3_LAYERS = 30  # FLUX.2 reads hidden states 10, 20 and 30: the pruned depth is the least that works
KL_VAE = {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1}  # GroupNorm(32) sets the floor on ch
WAN_VAE_DIM = 8
QWEN25_HIDDEN = 32  # Qwen-Image's joint attention width; the vocabulary is the real one (its tokenizer's)
QWEN25_VOCAB = 152064

# The first tekken special tokens, in their real ranks (FLUX.2's prompt template uses 1, 3/4, 17/18).
_SPECIAL_TEXT = (
    "<unk> <s> </s> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS] "
    "[TOOL_CALLS] [IMG] <pad> [IMG_BREAK] [IMG_END] [PREFIX] [MIDDLE] [SUFFIX] [SYSTEM_PROMPT] "
    "[/SYSTEM_PROMPT] [TOOL_CONTENT]"
)
_SPECIAL = tuple(_SPECIAL_TEXT.split())
_SPECIAL_COUNT = 32
_WORDS_TEXT = (
    "a an the of and in on at with by from to for under over near behind above is are was "
    "cat dog bird horse fish tree flower forest river lake mountain sea beach sky cloud sun moon star "
    "city street house room window door car train boat road bridge castle garden field snow rain fire "
    "man woman child person face hand eye hair portrait people crowd robot dragon monster "
    "red blue green yellow orange purple pink black white gray golden silver dark bright "
    "big small tall old young new beautiful happy sad quiet glowing shiny soft "
    "photo photograph image picture painting drawing illustration render style art detailed "
    "light shadow night day morning evening sunset sunrise fog mist smoke water ice stone wood metal glass "
    "sitting standing running walking flying holding looking wearing playing reading "
    "high quality cinematic realistic close up wide shot view scene background foreground "
    "You AI that reasons about descriptions give structured responses focusing object relationships "
    "attribution actions without speculation"
)
_WORDS = tuple(_WORDS_TEXT.split())


def _vocabulary() -> list[bytes]:
    """Byte-level BPE tokens: all 256 bytes, then every prefix of each " word" (merges follow from ranks)."""
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for word in _WORDS:
        for spelled in (f" {word}".encode(), word.encode()):
            for end in range(2, len(spelled) + 1):
                if spelled[:end] not in seen:
                    seen.add(spelled[:end])
                    tokens.append(spelled[:end])
    return tokens


def tekken_json() -> bytes:
    """A small tekken tokenizer file in Mistral's format, as comfy/text_encoders/flux.py reads it."""
    specials = [*_SPECIAL, *(f"<SPECIAL_{i}>" for i in range(len(_SPECIAL), _SPECIAL_COUNT))]
    vocab = _vocabulary()
    data = {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(vocab) + len(specials),
            "default_num_special_tokens": len(specials),
            "version": "v7",
        },
        "vocab": [
            {"rank": rank, "token_bytes": base64.b64encode(tok).decode(), "token_str": tok.decode("latin-1")}
            for rank, tok in enumerate(vocab)
        ],
        "special_tokens": [{"rank": r, "token_str": s, "is_control": True} for r, s in enumerate(specials)],
    }
    return json.dumps(data, sort_keys=True).encode()


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # protobuf writes a negative int32 as its 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _field(number: int, value: int | float | bytes) -> bytes:
    """One protobuf field: a varint (int, bool, enum), a float (fixed32) or a length-delimited blob."""
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(value)


_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6  # sentencepiece's ModelProto.SentencePiece.Type
_WORD_START = "\u2581"  # sentencepiece's escaped space


_T5_SPECIALS = (("<pad>", "pad"), ("</s>", "eos"), ("<unk>", "unk"))
# sentencepiece finds bos and eos by its default piece names ("<s>", "</s>")
GEMMA_SPECIALS = (("<pad>", "pad"), ("</s>", "eos"), ("<s>", "bos"), ("<unk>", "unk"))


def spiece_model(specials: tuple[tuple[str, str], ...] = _T5_SPECIALS) -> bytes:
    """A small unigram sentencepiece ModelProto with T5's special ids (pad 0, eos 1, unk 2), or others
    (Gemma's: pad 0, eos 1, bos 2, unk 3).

    Written field by field, not trained: sentencepiece's trainer runs floating-point EM whose last bits
    depend on the compiler and libm it was built with. The pieces are the specials, the 256 byte
    fallbacks, every character and every word with and without its leading space. Scores lie in
    (-2.6, -2] in steps of 1/1024 (exact in float32): one piece beats any split, and no two tie.
    """
    words = [piece for word in _WORDS for piece in (_WORD_START + word, word)]
    chars = sorted({c for word in words for c in word})
    normal_pieces = list(dict.fromkeys([*chars, *words]))
    pieces = [(text, _UNKNOWN if role == "unk" else _CONTROL, 0.0) for text, role in specials]
    pieces += [(f"<0x{b:02X}>", _BYTE, 0.0) for b in range(256)]
    pieces += [(p, _NORMAL, -2.0 - rank / 1024) for rank, p in enumerate(reversed(normal_pieces))]
    model = b"".join(
        _field(1, _field(1, piece.encode()) + _field(2, score) + _field(3, kind))
        for piece, kind, score in pieces
    )
    ids = {role: index for index, (_, role) in enumerate(specials)}
    roles = {40: "unk", 41: "bos", 42: "eos", 43: "pad"}  # TrainerSpec's id fields (-1: none)
    trainer = {3: 1, 4: len(pieces), 35: 1} | {field: ids.get(role, -1) for field, role in roles.items()}
    model += _field(2, b"".join(_field(number, value) for number, value in trainer.items()))
    return model + _field(3, _field(1, b"identity"))


def _blob(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def _fill(name: str, like: torch.Tensor, salt: str) -> torch.Tensor:
    """A deterministic value for one tensor: norms near 1, biases near 0, weights ~ 1/sqrt(fan_in)."""
    if not like.is_floating_point():
        return torch.zeros_like(like)
    noise = normal(zlib.crc32(f"{salt}/{name}".encode()), like.shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 1.0 + noise.abs() * 0.1
    if leaf in ("gamma", "running_mean") or like.ndim == 1:
        base = 1.0 if leaf in ("weight", "gamma") else 0.0
        return base + noise * 0.02
    return noise / math.sqrt(math.prod(like.shape[1:]))


def _weights(module: torch.nn.Module, salt: str, dtype: torch.dtype) -> StateDict:
    return {
        name: _fill(name, t, salt).to(t.dtype if not t.is_floating_point() else dtype).contiguous()
        for name, t in module.state_dict().items()
    }


def _config(json_name: str, **sizes: Any) -> dict[str, Any]:
    base = Path(comfy.clip_model.__file__).parent
    path = base / json_name if (base / json_name).exists() else base / "text_encoders" / json_name
    return {**json.loads(path.read_text()), **sizes}


def mistral3_flux2() -> StateDict:
    """Tiny FLUX.2 text encoder: Mistral-3 layout, 30 layers of width 64 (context 3 x 64 = 192)."""
    tekken = tekken_json()
    special = json.loads(tekken)["config"]["default_vocab_size"]
    config = {
        "vocab_size": special,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": MISTRAL3_LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "final_norm": False,
    }
    model = comfy.text_encoders.llama.Mistral3Small24B(config, torch.float32, "cpu", comfy.ops.manual_cast)
    return {**_weights(model, "mistral3", torch.float16), "tekken_model": _blob(tekken)}


QWEN3_VOCAB = 151936  # Qwen3's embedding rows: ComfyUI ships its tokenizer (qwen25_tokenizer), ids < this


def qwen3_4b() -> StateDict:
    """Tiny Z-Image text encoder: Qwen3-4B's layout (q/k norms, 128-wide heads), 3 layers of width 64
    (Z-Image reads the second-to-last hidden state, which needs 3: cap_feat_dim 64); the vocabulary is
    Qwen's own."""
    config = {
        "vocab_size": QWEN3_VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 3,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
    model = comfy.text_encoders.llama.Qwen3_4B(config, torch.float32, "cpu", comfy.ops.manual_cast)
    return _weights(model, "qwen3_4b", torch.bfloat16)


def _clip(json_name: str, layers: int, salt: str) -> StateDict:
    config = _config(json_name, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN)
    config.update(num_hidden_layers=layers, num_attention_heads=1, projection_dim=HIDDEN)
    model = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.manual_cast)
    return _weights(model, salt, torch.float16)


def qwen25_vl(layers: int = 2, salt: str = "qwen25_vl") -> StateDict:
    """Tiny Qwen2.5-VL (Qwen-Image's text encoder): 2 layers of width 32 (one 128-wide head, as the class
    fixes the head width) and a one-block vision tower of width 32 in ComfyUI's own vision class."""
    config = {
        "vocab_size": QWEN25_VOCAB,
        "hidden_size": QWEN25_HIDDEN,
        "intermediate_size": 2 * QWEN25_HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
    model = comfy.text_encoders.llama.Qwen25_7BVLI(config, torch.float32, "meta", comfy.ops.manual_cast)
    model.visual = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer(
        hidden_size=QWEN25_HIDDEN, output_hidden_size=QWEN25_HIDDEN, intermediate_size=2 * QWEN25_HIDDEN,
        num_heads=1, num_layers=1, device="meta", dtype=torch.float32, ops=comfy.ops.manual_cast,
    )  # fmt: skip
    return _weights(model, salt, torch.float16)


# HunyuanVideo 1.5 reads Qwen2.5-VL's third-to-last hidden state (hunyuan_image.py: layer_idx -3), which
# ComfyUI allows only with more than 3 layers.
HUNYUAN_QWEN25_LAYERS = 4


def qwen25_vl_hunyuan() -> StateDict:
    """Tiny Qwen2.5-VL for HunyuanVideo 1.5: Qwen-Image's tiny layout at 4 layers."""
    return qwen25_vl(HUNYUAN_QWEN25_LAYERS, "qwen25_vl_hunyuan")


def clip_l() -> StateDict:
    """Tiny CLIP-L: 2 layers of width 64 (FLUX.1 pooled 64); the vocabulary is CLIP's own 49408."""
    return _clip("sd1_clip_config.json", 2, "clip_l")


# SD3 reads both CLIPs' penultimate layer (sd3_clip.py: layer_idx -2), which ComfyUI allows only with
# more than 2 layers.
SD3_CLIP_LAYERS = 3


def sd3_clip_l() -> StateDict:
    """Tiny CLIP-L for SD3: 3 layers of width 64 (pooled 64, unprojected)."""
    return _clip("sd1_clip_config.json", SD3_CLIP_LAYERS, "sd3_clip_l")


def clip_g() -> StateDict:
    """Tiny CLIP-G (SD3): OpenCLIP bigG's config at 3 layers of width 64 (pooled 64, projected)."""
    return _clip("clip_config_bigg.json", SD3_CLIP_LAYERS, "clip_g")


def _t5(json_name: str, vocab_size: int, salt: str) -> StateDict:
    config = _config(json_name, d_model=HIDDEN, d_ff=2 * HIDDEN, num_heads=2, d_kv=HIDDEN // 2)
    config.update(num_layers=2, vocab_size=vocab_size)
    model = comfy.text_encoders.t5.T5(config, torch.float32, "cpu", comfy.ops.manual_cast)
    return _weights(model, salt, torch.float16)


def t5xxl() -> StateDict:
    """Tiny T5-XXL v1.1 (gated-gelu) encoder: 2 blocks, d_model 64 (FLUX.1 context 64)."""
    return _t5("t5_config_xxl.json", 32128, "t5xxl")


def umt5xxl() -> StateDict:
    """Tiny umt5-xxl encoder (Wan): 2 blocks, d_model 64, with its sentencepiece model inside."""
    spiece = spiece_model()
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    return {**_t5("umt5_config_xxl.json", vocab, "umt5xxl"), "spiece_model": _blob(spiece)}


def _kl_vae(z_channels: int, *, batch_norm: bool) -> torch.nn.Module:
    ddconfig: dict[str, Any] = {"double_z": True, "z_channels": z_channels, "resolution": 256}
    ddconfig.update(KL_VAE, in_channels=3, out_ch=3, attn_resolutions=[], dropout=0.0)
    if batch_norm:  # FLUX.2: quant convs and a batch-norm over the 2x2-patched latent (128 ch at /16)
        return kl_autoencoder({**ddconfig, "batch_norm_latent": True}, embed_dim=z_channels)
    return kl_autoencoder(ddconfig, embed_dim=None)


def flux2_vae() -> StateDict:
    """Tiny FLUX.2 KL autoencoder: z 32 at /8, seen by ComfyUI as 128 channels at /16."""
    return _weights(_kl_vae(32, batch_norm=True), "flux2_vae", torch.float32)


def flux1_ae() -> StateDict:
    """Tiny FLUX.1 autoencoder: 16 latent channels at /8."""
    return _weights(_kl_vae(16, batch_norm=False), "flux1_ae", torch.float32)


def sd3_vae() -> StateDict:
    """Tiny SD3 autoencoder: FLUX.1's layout (16 latent channels at /8), its own weights."""
    return _weights(_kl_vae(16, batch_norm=False), "sd3_vae", torch.float32)


_WAN_LAYOUT = {"dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [], "dropout": 0.0}


def wan21_vae() -> StateDict:
    """Tiny Wan 2.1 VAE: 16 latent channels, 8x spatial and 4x temporal compression, width 8."""
    model = comfy.ldm.wan.vae.WanVAE(
        dim=WAN_VAE_DIM, z_dim=16, temperal_downsample=[False, True, True], **_WAN_LAYOUT
    )
    return _weights(model, "wan21_vae", torch.float32)


def wan22_vae() -> StateDict:
    """Tiny Wan 2.2 (TI2V-5B) VAE: 48 latent channels, 16x spatial and 4x temporal compression."""
    model = comfy.ldm.wan.vae2_2.WanVAE(
        dim=WAN_VAE_DIM,
        dec_dim=WAN_VAE_DIM,
        z_dim=48,
        temperal_downsample=[False, True, True],
        **_WAN_LAYOUT,
    )
    return _weights(model, "wan22_vae", torch.float32)


WAV2VEC2_DIM = 32  # the tiny Wan S2V's audio_dim
WAV2VEC2_LAYERS = (
    24  # as wav2vec2-large: S2V weighs all 25 hidden states (comfy/ldm/wan/model.py CausalAudioEncoder)
)


def wav2vec2() -> StateDict:
    """Tiny wav2vec2 (Wan 2.2 S2V's audio encoder) in the large layout (layer-normed convs, stable layer
    norm): width 32, 24 layers; the conv feature encoder is 512 wide in every size."""
    model = Wav2Vec2Model(
        embed_dim=WAV2VEC2_DIM, num_heads=1, num_layers=WAV2VEC2_LAYERS, conv_norm=True, conv_bias=True,
        do_normalize=True, do_stable_layer_norm=True, operations=comfy.ops.manual_cast,
    )  # fmt: skip
    return _weights(model, "wav2vec2", torch.float32)


FILES: Mapping[str, Callable[[], StateDict]] = {
    "text_encoders/tiny/mistral3-flux2.safetensors": mistral3_flux2,
    "text_encoders/tiny/clip-l.safetensors": clip_l,
    "text_encoders/tiny/t5xxl.safetensors": t5xxl,
    "text_encoders/tiny/umt5xxl.safetensors": umt5xxl,
    "text_encoders/tiny/qwen3-4b.safetensors": qwen3_4b,
    "text_encoders/tiny/sd3-clip-l.safetensors": sd3_clip_l,
    "text_encoders/tiny/clip-g.safetensors": clip_g,
    "text_encoders/tiny/qwen25-vl.safetensors": qwen25_vl,
    "vae/tiny/flux2-vae.safetensors": flux2_vae,
    "vae/tiny/flux1-ae.safetensors": flux1_ae,
    "vae/tiny/wan21-vae.safetensors": wan21_vae,
    "vae/tiny/wan22-vae.safetensors": wan22_vae,
    "vae/tiny/sd3-vae.safetensors": sd3_vae,
    "audio_encoders/tiny/wav2vec2.safetensors": wav2vec2,
}


def build(models_dir: Path) -> list[Path]:
    """Write the tiny text encoders and VAEs under `models_dir` (same bytes on every run)."""
    return write(models_dir, FILES)


def write(models_dir: Path, files: Mapping[str, Callable[[], StateDict]]) -> list[Path]:
    """Write each state dict under `models_dir` at its relative path."""
    written = []
    for relative, make in files.items():
        path = models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(make(), str(path))
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
        written.append(path)
    return written

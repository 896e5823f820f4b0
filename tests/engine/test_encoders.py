"""Text encoders and VAEs: the tiny twins load through our loaders, encode and round-trip in-process.

ComfyUI goes on sys.path in conftest.py; `models_dir` holds every tiny model, registered as model folders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import folder_paths
import pytest
import safetensors.torch
import torch
from darkroom.formats.arch import ModelFileError
from darkroom.nodes.encoders import DarkroomCLIPVisionLoader, DarkroomTextEncoderLoader, DarkroomVAELoader
from darkroom.ops import encoders, vae
from darkroom.ops.encoders import inspect_text_encoder, load_text_encoder
from darkroom.ops.vae import VAEFamily, load_vae
from darkroom.tiny import encoders as tiny

TE = "text_encoders/tiny"
TEXT_ENCODERS = {
    # family: (files, context shape, pooled shape)
    "flux2": (["mistral3-flux2"], (1, None, 192), None),
    "flux1": (["clip-l", "t5xxl"], (1, 256, 64), (1, 64)),
    "wan": (["umt5xxl"], (1, 512, 64), None),
    "zimage": (["qwen3-4b"], (1, None, 64), None),
    # SD3: 77 CLIP-L + CLIP-G tokens, then 77 T5 ones, every token padded to 4096; pooled CLIP-L + CLIP-G
    "sd3": (["sd3-clip-l", "clip-g", "t5xxl"], (1, 154, 4096), (1, 128)),
    "qwen_image": (["qwen25-vl"], (1, None, 32), None),
    "hunyuan_video_15": (["qwen25-vl-4l", "byt5-small-glyph"], (1, None, 32), None),
}
VAES = {
    # family: (file, frames in, latent shape)
    "flux2": ("flux2-vae", 1, (1, 128, 4, 4)),
    "flux1": ("flux1-ae", 1, (1, 16, 8, 8)),
    "wan21": ("wan21-vae", 5, (1, 16, 2, 8, 8)),
    "wan22": ("wan22-vae", 5, (1, 48, 2, 4, 4)),
    "sd3": ("sd3-vae", 1, (1, 16, 8, 8)),
    "hunyuan_video_15": ("hunyuan-video-15-vae", 5, (1, 32, 2, 4, 4)),
}


def _byt5(models_dir: Path) -> Path:
    return models_dir / TE / "byt5-small-glyph.safetensors"


def _te_paths(models_dir: Path, family: str) -> list[Path]:
    return [models_dir / TE / f"{name}.safetensors" for name in TEXT_ENCODERS[family][0]]


def _encode(clip: Any, prompt: str) -> tuple[torch.Tensor, dict[str, Any]]:
    ((cond, extras),) = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    return cond, extras


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_writes_every_agreed_file(models_dir: Path, tmp_path: Path) -> None:
    written = tiny.build(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(tiny.FILES)
    for path in written:  # a rebuild (here and in the fixture) writes the same bytes
        assert _sha256(path) == _sha256(models_dir / path.relative_to(tmp_path)), path.name


@pytest.mark.parametrize("family", sorted(TEXT_ENCODERS))
def test_text_encoder_gives_agreed_widths(models_dir: Path, family: str) -> None:
    _, context_shape, pooled_shape = TEXT_ENCODERS[family]
    clip = load_text_encoder(_te_paths(models_dir, family), family)
    cond, extras = _encode(clip, "a red cat sitting on a tree at sunset")
    other, _ = _encode(clip, "a photo of a blue robot in the city")
    assert cond.ndim == 3
    assert all(want in (None, got) for want, got in zip(context_shape, cond.shape, strict=True))
    assert torch.isfinite(cond).all()
    assert "pooled_output" in extras  # FLUX.2's model reads the key even though its value is None
    pooled = extras["pooled_output"]
    assert (pooled is None) if pooled_shape is None else tuple(pooled.shape) == pooled_shape
    assert not (cond.shape == other.shape and torch.allclose(cond, other))


def test_loading_twice_gives_identical_outputs(models_dir: Path) -> None:
    prompt = "a glowing dragon over a castle, (cinematic:1.2)"
    first, _ = _encode(load_text_encoder(_te_paths(models_dir, "flux2"), "flux2"), prompt)
    second, _ = _encode(load_text_encoder(_te_paths(models_dir, "flux2"), "flux2"), prompt)
    assert torch.equal(first, second)
    vae_path = models_dir / "vae/tiny/flux1-ae.safetensors"
    latent = torch.linspace(-1, 1, 16 * 8 * 8).reshape(1, 16, 8, 8)
    assert torch.equal(load_vae(vae_path, "flux1").decode(latent), load_vae(vae_path, "flux1").decode(latent))


def test_flux1_files_in_either_order(models_dir: Path) -> None:
    paths = _te_paths(models_dir, "flux1")
    forward, _ = _encode(load_text_encoder(paths, "flux1"), "a dog")
    backward, _ = _encode(load_text_encoder(paths[::-1], "flux1"), "a dog")
    assert torch.equal(forward, backward)


def test_wrong_family_text_encoder_is_rejected_with_file_and_counts(models_dir: Path) -> None:
    umt5 = models_dir / TE / "umt5xxl.safetensors"
    with pytest.raises(ModelFileError) as caught:
        load_text_encoder([umt5], "flux2")
    message = str(caught.value)
    assert str(umt5) in message
    assert "looks like a umt5 encoder (Wan)" in message
    assert "expected a Mistral-3 text encoder (FLUX.2)" in message
    assert "missing keys: 3" in message and "unexpected keys: 22" in message
    assert caught.value.code == "model_file_mismatch"


def test_umt5_passed_as_flux1_t5_fails_the_strict_key_check(models_dir: Path) -> None:
    paths = [models_dir / TE / "clip-l.safetensors", models_dir / TE / "umt5xxl.safetensors"]
    with pytest.raises(
        ModelFileError, match=r"do not match the model built.*unexpected keys: 1 \(e\.g\. encoder"
    ):
        load_text_encoder(paths, "flux1")


def test_t5_as_wan_is_rejected_for_its_missing_tokenizer(models_dir: Path) -> None:
    with pytest.raises(ModelFileError, match=r"t5xxl\.safetensors: the file carries no `spiece_model`"):
        load_text_encoder([models_dir / TE / "t5xxl.safetensors"], "wan")


def test_config_override_that_contradicts_the_weights_names_the_file(models_dir: Path) -> None:
    with pytest.raises(ModelFileError, match=r"umt5xxl\.safetensors: weight shapes do not fit config"):
        load_text_encoder(_te_paths(models_dir, "wan"), "wan", config_override={"umt5xxl": {"num_heads": 4}})
    with pytest.raises(ValueError, match=r"config_override names \['t5xxl'\]: expected .*umt5xxl"):
        load_text_encoder(_te_paths(models_dir, "wan"), "wan", config_override={"t5xxl": {}})


def test_flux2_encoder_too_shallow_for_its_hidden_states(models_dir: Path, tmp_path: Path) -> None:
    import safetensors.torch

    sd = safetensors.torch.load_file(str(_te_paths(models_dir, "flux2")[0]))
    shallow = {
        k: v for k, v in sd.items() if not k.startswith(tuple(f"model.layers.{i}." for i in range(20, 30)))
    }
    path = tmp_path / "shallow.safetensors"
    safetensors.torch.save_file(shallow, str(path))
    with pytest.raises(ModelFileError, match=r"hidden states \(10, 20, 30\) but the encoder has 20 layers"):
        load_text_encoder([path], "flux2")
    qwen3 = safetensors.torch.load_file(str(_te_paths(models_dir, "zimage")[0]))
    safetensors.torch.save_file({k: v for k, v in qwen3.items() if ".layers.2." not in k}, str(path))
    with pytest.raises(ModelFileError, match="second-to-last hidden state but the encoder has 2 layers"):
        inspect_text_encoder([path], "zimage")


@pytest.mark.parametrize("family", sorted(VAES))
def test_vae_round_trips_with_real_latent_channels(models_dir: Path, family: str) -> None:
    name, frames, latent_shape = VAES[family]
    vae = load_vae(models_dir / "vae/tiny" / f"{name}.safetensors", family)
    pixels = torch.rand(frames, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = vae.encode(pixels)
    assert tuple(latent.shape) == latent_shape
    assert vae.latent_channels == latent_shape[1]
    decoded = vae.decode(latent)
    assert decoded.shape[-4:] == (frames, 64, 64, 3)
    assert torch.isfinite(decoded).all()


def test_wrong_family_vae_is_rejected_with_the_right_family_named(models_dir: Path) -> None:
    path = models_dir / "vae/tiny/wan22-vae.safetensors"
    with pytest.raises(ModelFileError) as caught:
        load_vae(path, "wan21")
    message = str(caught.value)
    assert str(path) in message and "looks like a Wan 2.2 VAE" in message
    assert "expected a Wan 2.1 VAE" in message and "unexpected keys: 1" in message
    assert message.endswith("this file loads with family wan22).")
    with pytest.raises(ValueError, match=r"unknown VAE family 'sdxl': expected one of flux2 \| flux1"):
        load_vae(path, "sdxl")


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: t.shape for name, t in module.state_dict().items()}


def test_full_size_text_encoder_layouts_give_the_real_configs() -> None:
    import comfy.clip_model
    import comfy.ops
    import comfy.text_encoders.llama
    import comfy.text_encoders.t5

    ops, configs = comfy.ops.manual_cast, Path(comfy.clip_model.__file__).parent
    with torch.device("meta"):  # the real sizes, without allocating them
        mistral = comfy.text_encoders.llama.Mistral3Small24B({}, torch.bfloat16, "meta", ops)
        qwen3 = comfy.text_encoders.llama.Qwen3_4B({}, torch.bfloat16, "meta", ops)
        t5_config = json.loads((configs / "text_encoders" / "t5_config_xxl.json").read_text())
        t5 = comfy.text_encoders.t5.T5(t5_config, torch.float16, "meta", ops)
        clip_config = json.loads((configs / "sd1_clip_config.json").read_text())
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float16, "meta", ops)
        bigg_config = json.loads((configs / "clip_config_bigg.json").read_text())
        clip_g = comfy.clip_model.CLIPTextModel(bigg_config, torch.float16, "meta", ops)
    assert encoders.mistral3_config(mistral.state_dict()) == {
        **{"vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40},
        **{"num_attention_heads": 32, "num_key_value_heads": 8, "final_norm": True},
    }
    assert encoders.QWEN3_4B.infer(qwen3.state_dict()) == {
        **{"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36},
        **{"num_attention_heads": 32, "num_key_value_heads": 8, "final_norm": True},
    }
    assert encoders.t5_config(t5.state_dict()) == {
        **{"vocab_size": 32128, "d_model": 4096, "num_layers": 24, "num_heads": 64, "d_kv": 64},
        **{"d_ff": 10240, "is_gated_act": True},
    }
    assert encoders.clip_text_config(clip.state_dict())["num_attention_heads"] == 12
    assert encoders.clip_text_config(clip_g.state_dict()) == {
        **{"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32},
        **{"num_attention_heads": 20, "max_position_embeddings": 77, "projection_dim": 1280},
    }
    with torch.device("meta"):
        qwen = comfy.text_encoders.llama.Qwen25_7BVLI({}, torch.bfloat16, "meta", ops)
    assert encoders.qwen25_config(qwen.state_dict()) == {
        **{"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28},
        **{"num_attention_heads": 28, "num_key_value_heads": 4, "final_norm": True},
    }
    assert encoders.qwen25_vision_config(qwen.state_dict()) == encoders.QWEN25_VISION  # kept as built


def test_sd3_takes_clip_l_clip_g_and_t5_in_that_order(models_dir: Path) -> None:
    """Three files, each checked for its part; a narrower T5 is zero-padded to SD3's 4096 features."""
    paths = _te_paths(models_dir, "sd3")
    with pytest.raises(ModelFileError, match="expected a CLIP-G"):  # the T5 where CLIP-G belongs
        load_text_encoder([paths[0], paths[2], paths[1]], "sd3")
    with pytest.raises(ValueError, match=r"family sd3 needs 3 file\(s\)"):
        load_text_encoder(paths[:2], "sd3")
    cond, _ = _encode(load_text_encoder(paths, "sd3"), "a red cat")
    t5_tokens = cond[0, 77:]
    assert t5_tokens[:, :64].abs().sum() > 0 and not t5_tokens[:, 64:].any()


def test_qwen_image_encoder_reads_images_through_its_own_vision_tower(models_dir: Path) -> None:
    """The tiny Qwen2.5-VL's 32-wide vision tower replaces the 1280-wide one ComfyUI builds; an image in
    the prompt (TextEncodeQwenImageEditPlus's way) becomes tokens that change the conditioning."""
    clip = load_text_encoder(_te_paths(models_dir, "qwen_image"), "qwen_image")
    assert clip.cond_stage_model.qwen25_7b.transformer.visual.hidden_size == 32
    prompt = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>make it night"
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 64, 96, 3, generator=gen) for _ in range(2)]
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(prompt, images=[i]))[0][0] for i in images]
    plain = _encode(clip, "make it night")[0]
    assert conds[0].shape[1] > plain.shape[1] and torch.isfinite(conds[0]).all()
    assert conds[0].shape == conds[1].shape and not torch.allclose(conds[0], conds[1])


@pytest.mark.parametrize("family", list(VAEFamily))
def test_full_size_vae_layouts_are_rebuilt_exactly(family: VAEFamily) -> None:
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    hunyuan = {"block_out_channels": [128, 256, 512, 1024, 1024], "in_channels": 3, "out_channels": 3}
    hunyuan.update(num_res_blocks=2, ffactor_spatial=16, ffactor_temporal=4, z_channels=32)
    hunyuan.update(downsample_match_channel=True, upsample_match_channel=True)
    kl = {"double_z": True, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128}
    kl.update(ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    with torch.device("meta"):  # the stock shapes of sd.py:420-560
        real = {
            VAEFamily.FLUX2: lambda: vae.kl_autoencoder(
                {**kl, "z_channels": 32, "batch_norm_latent": True}, embed_dim=32
            ),
            VAEFamily.FLUX1: lambda: vae.kl_autoencoder({**kl, "z_channels": 16}, embed_dim=None),
            VAEFamily.SD3: lambda: vae.kl_autoencoder({**kl, "z_channels": 16}, embed_dim=None),
            VAEFamily.WAN21: lambda: comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, **vae.WAN_LAYOUT),
            VAEFamily.WAN22: lambda: comfy.ldm.wan.vae2_2.WanVAE(
                dim=160, dec_dim=256, z_dim=48, **vae.WAN_LAYOUT
            ),
            VAEFamily.HUNYUAN_VIDEO_15: lambda: AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.EmptyRegularizer"},
                encoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Encoder", "params": hunyuan},
                decoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Decoder", "params": hunyuan},
            ),
        }[family]()
        rebuilt, attributes = vae.build_model(real.state_dict(), family)
    assert _shapes(rebuilt) == _shapes(real)
    channels = {"flux2": 128, "flux1": 16, "wan21": 16, "wan22": 48, "sd3": 16, "hunyuan_video_15": 32}
    assert attributes["latent_channels"] == channels[family]


def test_nodes_load_through_the_model_folders(models_dir: Path) -> None:
    for node in (DarkroomTextEncoderLoader, DarkroomVAELoader):
        schema = node.define_schema()
        assert all(item.tooltip for item in schema.inputs), node.__name__
    assert "tiny/t5xxl.safetensors" in folder_paths.get_filename_list("text_encoders")
    validate_te, validate_vae = DarkroomTextEncoderLoader.validate_inputs, DarkroomVAELoader.validate_inputs
    assert "set text_encoder_name_2" in str(validate_te("tiny/t5xxl.safetensors", "flux1"))
    assert "looks like a umt5 encoder (Wan)" in str(validate_te("tiny/umt5xxl.safetensors", "flux2"))
    assert "carries no `spiece_model`" in str(validate_te("tiny/t5xxl.safetensors", "wan"))
    assert validate_te("tiny/umt5xxl.safetensors", "wan", "none", '{"umt5xxl": {}}') is True
    assert validate_te("tiny/clip-l.safetensors", "flux1", "tiny/t5xxl.safetensors") is True
    assert "loads with family wan22" in str(validate_vae("tiny/wan22-vae.safetensors", "wan21"))
    assert validate_vae("tiny/flux2-vae.safetensors", "flux2") is True
    clip = DarkroomTextEncoderLoader.execute(
        "tiny/t5xxl.safetensors", "flux1", "tiny/clip-l.safetensors", '{"clip_l": {}}'
    ).result[0]
    assert _encode(clip, "a cat")[0].shape == (1, 256, 64)
    vae = DarkroomVAELoader.execute("tiny/wan21-vae.safetensors", "wan21").result[0]
    assert vae.latent_channels == 16


def test_siglip_loads_at_its_own_size_and_other_files_are_refused(models_dir: Path) -> None:
    schema = DarkroomCLIPVisionLoader.define_schema()
    assert all(item.tooltip for item in schema.inputs)
    folder_paths.add_model_folder_path("clip_vision", str(models_dir / "text_encoders"))
    refused = str(DarkroomCLIPVisionLoader.validate_inputs("tiny/t5xxl.safetensors"))
    assert "is not a SigLIP vision tower" in refused and "t5xxl" in refused
    assert DarkroomCLIPVisionLoader.validate_inputs("tiny/siglip-56.safetensors") is True
    siglip = DarkroomCLIPVisionLoader.execute("tiny/siglip-56.safetensors").result[0]
    image = torch.rand(1, 80, 64, 3, generator=torch.Generator().manual_seed(0))
    features = siglip.encode_image(image).last_hidden_state
    assert features.shape == (1, 16, 1152) and torch.isfinite(features).all()  # 56 px: 4 x 4 patches


def test_hunyuan_video_15_text_encoder_runs_byt5_on_quoted_text_only(models_dir: Path) -> None:
    clip = load_text_encoder(_te_paths(models_dir, "hunyuan_video_15"), "hunyuan_video_15")
    _, plain = _encode(clip, "a shop front at night")
    _, quoted = _encode(clip, 'a shop front with a sign that says "OPEN"')
    assert "conditioning_byt5small" not in plain
    glyphs = quoted["conditioning_byt5small"]
    assert glyphs.shape[0] == 1 and glyphs.shape[-1] == 1472 and torch.isfinite(glyphs).all()
    with pytest.raises(ValueError, match="needs 2 file"):
        load_text_encoder(_te_paths(models_dir, "qwen_image"), "hunyuan_video_15")
    with pytest.raises(ModelFileError, match="third-to-last hidden state but the encoder has 2 layers"):
        inspect_text_encoder([*_te_paths(models_dir, "qwen_image"), _byt5(models_dir)], "hunyuan_video_15")


def test_a_scaled_fp8_text_encoder_loads_as_released_files_are_stored(
    models_dir: Path, tmp_path: Path
) -> None:
    """Comfy-Org's umt5_xxl_fp8_e4m3fn_scaled layout (fp8 block weights, a `scale_weight` each, the
    `scaled_fp8` marker) loads into ComfyUI's mixed-precision layers: before the weights went in as the
    model was built, CLIP() measured the model first and failed ('Linear' object has no attribute
    'weight'), found by bench_gpu.py --cpu-real-size on the real Wan 2.2 5B graph."""
    plain = safetensors.torch.load_file(str(models_dir / TE / "umt5xxl.safetensors"))
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in plain.items():
        if key.startswith("encoder.block.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
            scaled[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            scaled[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
        else:
            scaled[key] = value
    path = tmp_path / "umt5xxl-fp8-scaled.safetensors"
    safetensors.torch.save_file(scaled, str(path))
    clip = load_text_encoder([path], "wan")
    q = clip.cond_stage_model.umt5xxl.transformer.encoder.block[0].layer[0].SelfAttention.q
    assert getattr(q, "quant_format", None), "the block linears are ComfyUI's quantised layers"
    first, _ = _encode(clip, "a red cat sitting on a tree")
    second, _ = _encode(clip, "a photo of a blue robot")
    assert first.shape == (1, 512, 64) and torch.isfinite(first).all()
    assert not torch.equal(first, second)

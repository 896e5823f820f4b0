"""darkroom's wav2vec2 nodes (Wan 2.2 S2V's audio encoder, without torchaudio): plain-torch resampling to
16 kHz, and an AUDIO_ENCODER_OUTPUT that ComfyUI's own WanSoundImageToVideo takes."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from darkroom.nodes.audio_encoder import DarkroomAudioEncoderEncode, DarkroomAudioEncoderLoader
from darkroom.ops.audio_encoder import resample


def tone(hz: float, rate: int, seconds: float) -> torch.Tensor:
    return torch.sin(2 * math.pi * hz * torch.arange(int(rate * seconds), dtype=torch.float64) / rate)


def test_resampling_keeps_a_tone_and_scales_its_length() -> None:
    for rate in (8000, 22050, 44100, 48000):
        got = resample(tone(440, rate, 0.5)[None, None], rate, 16000)[0, 0]
        assert got.shape[0] == math.ceil(16000 * int(rate * 0.5) / rate)
        want = tone(440, 16000, 0.5)[: got.shape[0]]
        inner = slice(200, -200)  # the edges see the zero padding
        assert float((got[inner] - want[inner]).abs().max()) < 0.02, rate
    same = tone(440, 16000, 0.1)[None, None]
    assert resample(same, 16000, 16000) is same


def test_the_encoding_feeds_wan_sound_image_to_video(models_dir: Path) -> None:
    from comfy_extras.nodes_wan import WanSoundImageToVideo

    (encoder,) = DarkroomAudioEncoderLoader.execute(audio_encoder_name="tiny/wav2vec2.safetensors").result
    assert encoder.config["embed_dim"] == 32 and encoder.config["num_layers"] == 24
    audio = {"waveform": tone(300, 24000, 0.5).float()[None, None], "sample_rate": 24000}
    (out,) = DarkroomAudioEncoderEncode.execute(audio_encoder=encoder, audio=audio).result
    assert out["audio_samples"] == 8000  # 0.5 s, at 16 kHz
    layers = out["encoded_audio_all_layers"]
    assert len(layers) == 25 and tuple(layers[-1].shape) == (1, 24, 32)  # wav2vec2: ~50 features a second
    assert bool(torch.isfinite(out["encoded_audio"]).all())
    silent = {"waveform": torch.zeros_like(audio["waveform"]), "sample_rate": 24000}
    (quiet,) = DarkroomAudioEncoderEncode.execute(audio_encoder=encoder, audio=silent).result
    assert float((quiet["encoded_audio"] - out["encoded_audio"]).abs().mean()) > 1e-3, "the sound is ignored"
    # at 8 fps, frame k's moment (k / 8 s) is where the node reads k / 16 s: the time axis halves
    (slow,) = DarkroomAudioEncoderEncode.execute(audio_encoder=encoder, audio=audio, fps=8.0).result
    for full, half in zip(layers, slow["encoded_audio_all_layers"], strict=True):
        assert tuple(half.shape) == (1, 12, 32)
        assert torch.allclose(half[:, [0, -1]], full[:, [0, -1]]) and not torch.allclose(half, full[:, :12])
    cond = [[torch.zeros(1, 4, 64), {}]]
    positive, negative, latent = WanSoundImageToVideo.execute(
        positive=cond, negative=cond, vae=None, width=64, height=64, length=5, batch_size=1,
        audio_encoder_output=out,
    ).result  # fmt: skip
    assert tuple(positive[0][1]["audio_embed"].shape) == (1, 25, 32, 8)  # 2 latent frames x 4
    assert tuple(latent["samples"].shape) == (1, 16, 2, 8, 8)


def test_the_released_layouts_get_the_released_configs() -> None:
    """Built on the meta device at the released sizes (no memory): the sizes read off the keys are
    ComfyUI's own for wav2vec2-large (audio_encoders.py) and Wan 2.2 S2V 14B (its class defaults, 5120
    wide, 40 layers)."""
    import comfy.ops
    from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model
    from comfy.ldm.wan.model import WanModel_S2V
    from darkroom.formats.arch import Family, infer
    from darkroom.ops.audio_encoder import wav2vec2_config
    from darkroom.ops.diffusion import expected_shapes

    large = {"embed_dim": 1024, "num_heads": 16, "num_layers": 24, "conv_norm": True, "conv_bias": True,
             "do_normalize": True, "do_stable_layer_norm": True}  # fmt: skip
    model = Wav2Vec2Model(**large, device="meta", operations=comfy.ops.disable_weight_init)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert wav2vec2_config(shapes, Path("wav2vec2-large")) == large
    s2v = WanModel_S2V(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096, in_dim=16,
                       out_dim=16, device="meta", operations=comfy.ops.disable_weight_init)  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in s2v.state_dict().items()}
    config = infer(Family.WAN, shapes, "wan2.2_s2v_14B")
    assert config.variant == "wan22-s2v" and config.unet_config["audio_dim"] == 1024
    assert (config.unet_config["num_heads"], config.unet_config["num_layers"]) == (40, 40)
    assert expected_shapes(config) == shapes

"""Sampler, schedule and VAE override nodes in-process on the tiny models, wired as in the workflows: at
their defaults the output is byte-identical to the graph without them; each override changes it and is
reproducible; the Wan custom-sampling graphs equal the KSampler(Advanced) ones; wrong VAEs fail early."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import comfy.samplers
import comfy_extras.nodes_custom_sampler as cs
import comfy_extras.nodes_flux as nf
import comfy_extras.nodes_model_advanced as ma
import nodes
import pytest
import torch
from darkroom.formats import arch
from darkroom.nodes import extras as nodes_extras
from darkroom.nodes import sampling as nodes_sampling
from darkroom.ops import diffusion, sampling, vae

Sigmas, Select = nodes_sampling.DarkroomSigmas, nodes_sampling.DarkroomSamplerSelect
KSigmas = nodes_sampling.DarkroomKSamplerSigmas
STEPS = 4
DEFAULTS = {"scheduler": "default", "custom_sigmas": "", "shift": 0.0, "denoise": 1.0}


@pytest.fixture(scope="module")
def flux2(models_dir: Path) -> Any:
    return diffusion.load_diffusion_model(
        models_dir / "diffusion_models/tiny/flux2-bf16.safetensors", arch.Family.FLUX
    )


@pytest.fixture(scope="module")
def experts(models_dir: Path) -> tuple[Any, Any]:
    """The A14B experts with the workflow's ModelSamplingSD3 shift."""
    out = []
    for which in ("high", "low"):
        path = models_dir / f"diffusion_models/tiny/wan22-a14b-{which}-bf16.safetensors"
        out.append(ma.ModelSamplingSD3().patch(diffusion.load_diffusion_model(path, arch.Family.WAN), 8.0)[0])
    return out[0], out[1]


def cond(width: int, seed: int, **extra: Any) -> list[list[Any]]:
    return [[torch.randn(1, 8, width, generator=torch.Generator().manual_seed(seed)), extra]]


def flux2_graph(model: Any, sampler_name: str | None = None, **override: Any) -> torch.Tensor:
    """workflows/flux2-t2i.json's sampling part; DarkroomSamplerSelect / DarkroomSigmas inserted if asked."""
    sampler = cs.KSamplerSelect.execute(sampler_name="euler").args[0]
    sigmas = nf.Flux2Scheduler.execute(steps=STEPS, width=64, height=64).args[0]
    if sampler_name is not None:
        sampler = Select.execute(sampler=sampler, sampler_name=sampler_name).args[0]
    if override:
        sigmas = Sigmas.execute(model=model, sigmas=sigmas, **(DEFAULTS | override)).args[0]
    guider = cs.BasicGuider.execute(model=model, conditioning=cond(192, 2, pooled_output=torch.zeros(1, 64)))
    out = cs.SamplerCustomAdvanced.execute(
        noise=cs.RandomNoise.execute(noise_seed=5).args[0],
        guider=guider.args[0],
        sampler=sampler,
        sigmas=sigmas,
        latent_image={"samples": torch.zeros(1, 128, 4, 4)},
    )
    return out.args[0]["samples"]


def test_defaults_are_byte_identical_and_pass_the_very_objects(flux2: Any) -> None:
    plain = flux2_graph(flux2)
    assert torch.equal(flux2_graph(flux2, sampler_name="default", **DEFAULTS), plain)
    default_sigmas = nf.Flux2Scheduler.execute(steps=STEPS, width=64, height=64).args[0]
    assert Sigmas.execute(model=flux2, sigmas=default_sigmas, **DEFAULTS).args[0] is default_sigmas
    euler = cs.KSamplerSelect.execute(sampler_name="euler").args[0]
    assert Select.execute(sampler=euler, sampler_name="default").args[0] is euler


@pytest.mark.parametrize(
    "override",
    [
        {"sampler_name": "dpmpp_2m"},
        {"sampler_name": "heun"},
        {"scheduler": "beta"},
        {"scheduler": "karras"},
        {"custom_sigmas": "[1.0, 0.6, 0.3, 0.1, 0.0]"},
        {"shift": 4.0},
        {"denoise": 0.6},
    ],
)
def test_each_override_changes_the_output_reproducibly(flux2: Any, override: dict[str, Any]) -> None:
    plain = flux2_graph(flux2)
    first, second = flux2_graph(flux2, **override), flux2_graph(flux2, **override)
    assert torch.equal(first, second)
    assert torch.isfinite(first).all() and float((first - plain).abs().max()) > 1e-3


def test_shift_and_scheduler_follow_comfyuis_own_nodes(flux2: Any, experts: tuple[Any, Any]) -> None:
    default = nf.Flux2Scheduler.execute(steps=STEPS, width=64, height=64).args[0]
    shifted = Sigmas.execute(model=flux2, sigmas=default, **(DEFAULTS | {"shift": 3.0})).args[0]
    mu = torch.linspace(1, 0, STEPS + 1)[:-1]  # FLUX: shift is mu of exp(mu) / (exp(mu) + 1 / t - 1)
    formula = [math.exp(3.0) / (math.exp(3.0) + 1 / float(t) - 1) for t in mu] + [0.0]
    assert torch.allclose(shifted, torch.tensor(formula), atol=1e-4)
    karras = Sigmas.execute(
        model=flux2, sigmas=default, **(DEFAULTS | {"scheduler": "karras", "denoise": 0.5})
    )
    stock = cs.BasicScheduler.execute(model=flux2, scheduler="karras", steps=STEPS, denoise=0.5).args[0]
    assert torch.equal(karras.args[0], stock)
    high = experts[0]
    wan_default = cs.BasicScheduler.execute(model=high, scheduler="simple", steps=STEPS, denoise=1.0).args[0]
    wan_shifted = Sigmas.execute(model=high, sigmas=wan_default, **(DEFAULTS | {"shift": 3.0})).args[0]
    resampled = ma.ModelSamplingSD3().patch(high, 3.0)[0]  # Wan: shift is ModelSamplingSD3's alpha
    stock = cs.BasicScheduler.execute(model=resampled, scheduler="simple", steps=STEPS, denoise=1.0).args[0]
    assert torch.equal(wan_shifted, stock) and not torch.equal(wan_shifted, wan_default)
    assert high.get_model_object("model_sampling").shift == 8.0  # the model itself is untouched


def test_denoise_alone_keeps_the_schedule_shape(flux2: Any) -> None:
    default = nf.Flux2Scheduler.execute(steps=STEPS, width=64, height=64).args[0]
    tail = Sigmas.execute(model=flux2, sigmas=default, **(DEFAULTS | {"denoise": 0.5})).args[0]
    assert len(tail) == len(default) and tail[-1] == 0 and tail[0] < default[0]
    assert torch.allclose(tail[::2], default[2:])  # half the noise: steps 2..4 of 4, interpolated between
    assert bool((tail[:-1] > tail[1:]).all())


def test_bad_overrides_fail_at_queue_time(flux2: Any) -> None:
    ok = Sigmas.validate_inputs(**DEFAULTS)
    assert ok is True
    conflict = Sigmas.validate_inputs(**(DEFAULTS | {"custom_sigmas": "[1, 0]", "scheduler": "karras"}))
    assert "sigmas replaces the whole schedule" in conflict
    assert "strictly descend" in Sigmas.validate_inputs(**(DEFAULTS | {"custom_sigmas": "[1, 2, 0]"}))
    assert "not one of" in Sigmas.validate_inputs(**(DEFAULTS | {"scheduler": "nope"}))
    # FLUX's shift is an exponent: a large one (a fuzzed 93.5) made every sigma NaN and the sampler
    # fail deep inside (a 500); it is the override's error (a 422) instead.
    default = nf.Flux2Scheduler.execute(steps=STEPS, width=64, height=64).args[0]
    with pytest.raises(sampling.OverrideError, match="shift 93.5 .* no finite schedule"):
        huge = {"shift": 93.5, "scheduler": "sgm_uniform"}
        Sigmas.execute(model=flux2, sigmas=default, **(DEFAULTS | huge))
    with pytest.raises(sampling.OverrideError, match="sampler 'nope'"):
        sampling.select_sampler(None, "nope")
    for node in [*nodes_extras.NODES, *nodes_sampling.NODES]:
        schema = node.define_schema()
        assert all(i.tooltip for i in schema.inputs), schema.node_id
        assert schema.node_id.startswith("Darkroom")


def a14b_ksampler(experts: tuple[Any, Any], conds: dict[str, Any], sampler_name: str, steps: int) -> Any:
    """The A14B workflows as they were: two KSamplerAdvanced handing over halfway."""
    sampler = nodes.KSamplerAdvanced()
    args = {"noise_seed": 3, "steps": steps, "cfg": 3.5, "sampler_name": sampler_name, "scheduler": "simple"}
    latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
    half = sampler.sample(experts[0], "enable", latent_image=latent, start_at_step=0, end_at_step=steps // 2,
                          return_with_leftover_noise="enable", **conds, **args)  # fmt: skip
    out = sampler.sample(experts[1], "disable", latent_image=half[0], start_at_step=steps // 2,
                         end_at_step=10000, return_with_leftover_noise="disable",
                         **conds, **args)  # fmt: skip
    return out[0]["samples"]


def a14b_custom(experts: tuple[Any, Any], conds: dict[str, Any], sampler_name: str, steps: int) -> Any:
    """workflows/wan22-a14b-t2v.json now: DarkroomKSamplerSigmas split halfway, two SamplerCustom."""
    schedule = {"sampler_name": sampler_name, "scheduler": "simple", "denoise": 1.0, "custom_sigmas": ""}
    sigmas = KSigmas.execute(model=experts[0], steps=steps, handover=0.5, **schedule).args
    sampler = cs.KSamplerSelect.execute(sampler_name=sampler_name).args[0]
    latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
    for model, add_noise, part in [(experts[0], True, sigmas[1]), (experts[1], False, sigmas[2])]:
        run = {"add_noise": add_noise, "noise_seed": 3, "cfg": 3.5, "sampler": sampler, "sigmas": part}
        latent = cs.SamplerCustom.execute(model=model, latent_image=latent, **run, **conds).args[0]
    return latent["samples"]


@pytest.mark.parametrize(("sampler_name", "steps"), [("euler", 4), ("euler_ancestral", 4), ("uni_pc", 5)])
def test_a14b_custom_sampling_graph_equals_the_ksampler_graph(
    experts: tuple[Any, Any], sampler_name: str, steps: int
) -> None:
    """Also for a sampler that draws noise from the seed (the low expert adds none but keeps the seed)
    and one KSampler schedules differently (uni_pc), over an odd step count."""
    conds = {"positive": cond(64, 4), "negative": cond(64, 5)}
    reference = a14b_ksampler(experts, conds, sampler_name, steps)
    assert torch.equal(a14b_custom(experts, conds, sampler_name, steps), reference)


@pytest.mark.parametrize(("sampler_name", "denoise"), [("uni_pc", 1.0), ("dpm_2", 0.6), ("euler", 0.6)])
def test_ksampler_schedule_is_ksamplers_not_basic_schedulers(
    experts: tuple[Any, Any], sampler_name: str, denoise: float
) -> None:
    model = experts[0]
    args = {"steps": 6, "sampler_name": sampler_name, "scheduler": "simple", "denoise": denoise}
    ours = KSigmas.execute(model=model, custom_sigmas="", handover=0.0, **args).args[0]
    theirs = comfy.samplers.KSampler(model, 6, "cpu", sampler_name, "simple", denoise).sigmas
    basic = cs.BasicScheduler.execute(model=model, scheduler="simple", steps=6, denoise=denoise).args[0]
    assert torch.equal(ours, theirs) and len(ours) == 7
    assert torch.equal(ours, basic) == (sampler_name == "euler")


def test_ksampler_schedule_explicit_sigmas_split_and_bad_inputs(experts: tuple[Any, Any]) -> None:
    args = {"steps": 20, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "handover": 0.5}
    whole, high, low = KSigmas.execute(model=experts[0], custom_sigmas="[1, 0.6, 0.3, 0.1, 0]", **args).args
    assert whole.tolist() == pytest.approx([1, 0.6, 0.3, 0.1, 0])  # steps do not matter
    assert high.tolist() == pytest.approx([1, 0.6, 0.3]) and low.tolist() == pytest.approx([0.3, 0.1, 0])
    assert KSigmas.validate_inputs(**args, custom_sigmas="[1, 0.5, 0]") is True
    bad = {
        "[1, 0]": "the two experts need at least one step each, but 1 step(s) split at 0.5 give 0 + 1",
        "[1, 1.5, 0]": "sigmas: values must strictly descend",
    }
    for text, message in bad.items():
        assert str(KSigmas.validate_inputs(**args, custom_sigmas=text)).startswith(message)
    one_model = args | {"handover": 0.0, "custom_sigmas": "[1, 0]"}
    assert KSigmas.validate_inputs(**one_model) is True
    assert "leave denoise 1" in str(KSigmas.validate_inputs(**one_model | {"denoise": 0.5}))
    assert "steps must be 1 to 10000" in str(
        KSigmas.validate_inputs(**args | {"steps": 0, "custom_sigmas": ""})
    )
    # denoise 0 is video-to-video's strength 0: an empty schedule, nothing sampled (the input comes back)
    assert KSigmas.validate_inputs(**args | {"denoise": 0.0, "custom_sigmas": ""}) is True


def test_vae_guard_rejects_a_vae_of_another_latent(flux2: Any, models_dir: Path) -> None:
    guard = nodes_extras.DarkroomVAEGuard
    flux2_vae = vae.load_vae(models_dir / "vae/tiny/flux2-vae.safetensors", "flux2")
    assert guard.execute(model=flux2, vae=flux2_vae).args == (flux2, flux2_vae)
    flux1_vae = vae.load_vae(models_dir / "vae/tiny/flux1-ae.safetensors", "flux1")
    with pytest.raises(sampling.VAEMismatchError) as err:
        guard.execute(model=flux2, vae=flux1_vae)
    assert str(err.value) == (
        "the VAE makes 16-channel image latents but the Flux2 model samples 128-channel image latents; "
        "pick a VAE of family flux2 (DarkroomVAELoader vae_name / family)"
    )
    wan21_vae = vae.load_vae(models_dir / "vae/tiny/wan21-vae.safetensors", "wan21")
    with pytest.raises(sampling.VAEMismatchError, match="16-channel video latents but the Flux2 model"):
        guard.execute(model=flux2, vae=wan21_vae)

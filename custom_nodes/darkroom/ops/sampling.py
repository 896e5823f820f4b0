"""Sampling overrides that are no-ops at their defaults, and a VAE check that fails before sampling.

A schedule override takes the workflow's own SIGMAS and returns that very tensor unless something is
overridden, so a workflow that always includes it samples byte-identically. Explicit sigmas replace the
schedule. A scheduler and/or shift rebuild it from the model's sampling object (ComfyUI's
calculate_sigmas; the default scheduler is `simple`), with the same step count; denoise < 1 then keeps
BasicScheduler's rule (schedule int(steps / denoise) steps, run the last `steps`). Denoise alone keeps the
workflow's schedule shape: its last `steps` steps are interpolated from fraction `denoise` of the noise.

A KSampler schedule (DarkroomKSamplerSigmas) is the one KSampler/KSamplerAdvanced would compute, by
ComfyUI's own code, so a SamplerCustom graph built on it samples exactly as the KSampler graph it
replaces; explicit sigmas replace it, and two experts split it as a KSamplerAdvanced pair does.

Shift is the model family's own parameter: FLUX (ModelSamplingFlux) mu, 2.02 for FLUX.2 and 1.15 for
FLUX.1; Wan (ModelSamplingDiscreteFlow, as ModelSamplingSD3 sets it) alpha, 8.0 / 5.0 in our workflows.
For these flow models the shift changes only the schedule (their timestep is sigma times a constant), so
the sigmas carry it and the model needs no patch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import comfy.model_sampling
import comfy.samplers
import torch

from ..formats.overrides import OverrideError

DEFAULT = "default"
MAX_SHIFT = 100.0  # the DarkroomSigmas shift input's bound
# The DarkroomSigmas denoise input's least value, enforced here too: ComfyUI does not hold a linked or
# API-set float to its min, and a scheduler rebuild runs steps / denoise steps (near 0: without end).
MIN_DENOISE = 0.01
MAX_STEPS = 10000  # KSampler's steps bound
SAMPLER_NAMES: list[str] = list(comfy.samplers.KSampler.SAMPLERS)
SCHEDULER_NAMES: list[str] = list(comfy.samplers.KSampler.SCHEDULERS)
_VAE_FAMILIES = {(128, 2): "flux2", (16, 2): "flux1", (16, 3): "wan21", (48, 3): "wan22"}


class VAEMismatchError(ValueError):
    """A VAE whose latent does not fit the model it would decode for."""

    code = "vae_mismatch"


@dataclass(frozen=True)
class ScheduleOverride:
    """What DarkroomSigmas changes; every field at its default changes nothing."""

    scheduler: str = DEFAULT
    sigmas: list[float] | None = None
    shift: float = 0.0  # 0: the model's own
    denoise: float = 1.0

    @property
    def is_default(self) -> bool:
        return self == ScheduleOverride()

    def check(self) -> None:
        """OverrideError for values no schedule can be built from, or a combination that conflicts."""
        if self.scheduler != DEFAULT and self.scheduler not in SCHEDULER_NAMES:
            raise OverrideError(f"scheduler {self.scheduler!r} is not one of {[DEFAULT, *SCHEDULER_NAMES]}")
        if not (math.isfinite(self.shift) and 0 <= self.shift <= MAX_SHIFT):
            raise OverrideError(f"shift must be 0 to {MAX_SHIFT:g} (0 = the model's own), got {self.shift}")
        if not (MIN_DENOISE <= self.denoise <= 1):
            raise OverrideError(
                f"denoise (image-to-image strength) must be {MIN_DENOISE} to 1, got {self.denoise}"
            )
        if self.sigmas is not None and (self.scheduler != DEFAULT or self.shift or self.denoise != 1):
            raise OverrideError(
                "sigmas replaces the whole schedule: leave scheduler 'default', shift 0 and denoise 1 with it"
            )


def shifted_sampling(model: Any, shift: float) -> Any:
    """A copy of the model's sampling object with another shift (the model itself is not touched)."""
    sampling = copy.deepcopy(model.get_model_object("model_sampling"))
    if isinstance(sampling, comfy.model_sampling.ModelSamplingFlux):
        sampling.set_parameters(shift=shift)
    elif isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        sampling.set_parameters(shift=shift, multiplier=sampling.multiplier)
    else:
        raise OverrideError(
            f"shift applies to flow models (FLUX, Wan); this model samples with {type(sampling).__name__}"
        )
    return sampling


def interpolated_tail(sigmas: torch.Tensor, denoise: float) -> torch.Tensor:
    """The same number of steps over the last `denoise` of a schedule, linearly interpolated."""
    steps = len(sigmas) - 1
    positions = torch.linspace(steps * (1.0 - denoise), steps, steps + 1, dtype=torch.float64)
    low = positions.floor().long().clamp(max=steps - 1)
    frac = positions - low
    src = sigmas.to(torch.float64)
    return (src[low] * (1 - frac) + src[low + 1] * frac).to(sigmas.dtype)


def compute_sigmas(model: Any, default: torch.Tensor, override: ScheduleOverride) -> torch.Tensor:
    """The schedule to sample with: `default` itself unless `override` changes something."""
    override.check()
    if override.is_default:
        return default
    if override.sigmas is not None:
        return torch.tensor(override.sigmas, dtype=torch.float32)
    steps = len(default) - 1
    if steps < 1:
        raise OverrideError(f"the workflow's schedule has {len(default)} sigmas; at least 2 are needed")
    if override.scheduler == DEFAULT and not override.shift:
        return interpolated_tail(default, override.denoise)
    sampling = (
        shifted_sampling(model, override.shift)
        if override.shift
        else model.get_model_object("model_sampling")
    )
    scheduler = "simple" if override.scheduler == DEFAULT else override.scheduler
    total = steps if override.denoise >= 1 else int(steps / override.denoise)
    sigmas: torch.Tensor = comfy.samplers.calculate_sigmas(sampling, scheduler, total).cpu()
    if not bool(torch.isfinite(sigmas).all()):
        # FLUX's shift is mu in exp(mu): past ~88 that overflows float32 and every sigma is NaN,
        # which a sampler would only fail on deep inside (found by the fuzz drill).
        raise OverrideError(
            f"shift {override.shift:g} with scheduler {scheduler!r} gives this model no finite schedule; "
            "use a smaller shift (FLUX's is an exponent, mu: FLUX.1 uses 1.15, FLUX.2 2.02)"
        )
    return sigmas[-(steps + 1) :]


@dataclass(frozen=True)
class KSamplerSchedule:
    """What DarkroomKSamplerSigmas builds: KSampler's schedule for these settings, or explicit sigmas,
    optionally split between two experts (handover 0: one model)."""

    steps: int
    sampler: str
    scheduler: str
    denoise: float = 1.0
    sigmas: list[float] | None = None
    handover: float = 0.0

    @property
    def length(self) -> int:
        """Steps the schedule will have: KSampler keeps `steps` under denoise, and none at denoise 0."""
        if self.sigmas is not None:
            return len(self.sigmas) - 1
        return self.steps if self.denoise > 0 else 0

    def check(self) -> None:
        """OverrideError for values KSampler would not take, or a split that leaves an expert no step."""
        if not (1 <= self.steps <= MAX_STEPS and 0 <= self.denoise <= 1 and 0 <= self.handover <= 1):
            raise OverrideError(
                f"steps must be 1 to {MAX_STEPS}, denoise and handover 0 to 1; "
                f"got {self.steps}, {self.denoise}, {self.handover}"
            )
        if self.sampler not in SAMPLER_NAMES or self.scheduler not in SCHEDULER_NAMES:
            raise OverrideError(
                f"sampler {self.sampler!r} / scheduler {self.scheduler!r}: not ComfyUI's names"
            )
        if self.sigmas is not None and self.denoise != 1:
            raise OverrideError("sigmas replaces the whole schedule: leave denoise 1 with it")
        if self.handover > 0 and self.length > 0:  # denoise 0 samples nothing: no expert needs a step
            handover_step(self.length, self.handover)

    def compute(self, model: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(whole schedule, high expert's part, low expert's part); without a handover the parts are
        the whole schedule and its last sigma."""
        self.check()
        if self.sigmas is not None:
            sigmas = torch.tensor(self.sigmas, dtype=torch.float32)
        else:
            # ComfyUI's own code: unlike BasicScheduler, KSampler schedules one step more and drops the
            # penultimate sigma for uni_pc, uni_pc_bh2, dpm_2 and dpm_2_ancestral, and treats denoise
            # above 0.9999 as 1 and 0 as an empty schedule.
            ksampler = comfy.samplers.KSampler(
                model, self.steps, "cpu", sampler=self.sampler, scheduler=self.scheduler, denoise=self.denoise
            )
            sigmas = ksampler.sigmas
        if self.handover <= 0:
            return sigmas, sigmas, sigmas[-1:]
        if len(sigmas) == 0:  # denoise 0: neither expert samples, the latent passes through as it is
            return sigmas, sigmas, sigmas
        step = handover_step(len(sigmas) - 1, self.handover)
        # KSamplerAdvanced's end_at_step / start_at_step slices (SplitSigmas'): the experts share a sigma.
        return sigmas, sigmas[: step + 1], sigmas[step:]


def handover_step(steps: int, handover: float) -> int:
    """Where a two-expert schedule of `steps` steps splits, as KSamplerAdvanced's end_at_step =
    int(steps * handover); OverrideError unless each expert gets at least one step."""
    step = int(steps * handover)
    if not 1 <= step <= steps - 1:
        raise OverrideError(
            f"the two experts need at least one step each, but {steps} step(s) split at {handover:g} give "
            f"{step} + {steps - step}; give at least 3 sigmas (2 steps)"
        )
    return step


def select_sampler(default: Any, name: str) -> Any:
    """The workflow's SAMPLER itself for 'default', else ComfyUI's sampler of that name."""
    if name == DEFAULT:
        return default
    if name not in SAMPLER_NAMES:
        raise OverrideError(f"sampler {name!r} is not one of {[DEFAULT, *SAMPLER_NAMES]}")
    return comfy.samplers.sampler_object(name)


def check_vae(model: Any, vae: Any) -> None:
    """VAEMismatchError unless the VAE's latent (channels, dimensions) is the one the model samples."""
    latent = model.get_model_object("latent_format")
    want = (int(latent.latent_channels), int(getattr(latent, "latent_dimensions", 2)))
    got = (int(vae.latent_channels), int(getattr(vae, "latent_dim", 2)))
    if want == got:
        return

    def describe(shape: tuple[int, int]) -> str:
        return f"{shape[0]}-channel {'video' if shape[1] == 3 else 'image'} latents"

    model_name = type(model.model.model_config).__name__
    hint = _VAE_FAMILIES.get(want)
    fix = f"a VAE of family {hint}" if hint else "the VAE made for this model"
    raise VAEMismatchError(
        f"the VAE makes {describe(got)} but the {model_name} model samples {describe(want)}; "
        f"pick {fix} (DarkroomVAELoader vae_name / family)"
    )

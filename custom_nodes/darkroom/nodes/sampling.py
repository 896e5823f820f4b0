"""Schedule and sampler override nodes: explicit sigmas, shift, denoise, KSampler's own schedule for
custom-sampling graphs, another sampler. At their defaults they pass the workflow's own schedule or
sampler through unchanged. Node ids are public API."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..formats.overrides import (
    OverrideError,
    parse_sigmas,
)
from ..ops.sampling import (
    DEFAULT,
    MAX_SHIFT,
    MIN_DENOISE,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    KSamplerSchedule,
    ScheduleOverride,
    compute_sigmas,
    select_sampler,
)


class DarkroomSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSigmas",
            display_name="Schedule Override (darkroom)",
            category="darkroom/sampling",
            description="Passes the workflow's schedule through, or replaces it by explicit sigmas, another "
            "scheduler, another shift or a partial denoise. Defaults change nothing.",
            inputs=[
                io.Model.Input("model", tooltip="The model the schedule is for (its sampling object)."),
                io.Sigmas.Input("sigmas", tooltip="The workflow's own schedule; its length sets the steps."),
                io.Combo.Input(
                    "scheduler",
                    options=[DEFAULT, *SCHEDULER_NAMES],
                    default=DEFAULT,
                    tooltip="'default' keeps the workflow's schedule; a name rebuilds it with ComfyUI's "
                    "scheduler of that name over the model's sampling, same step count.",
                ),
                io.String.Input(
                    "custom_sigmas",
                    default="",
                    tooltip="Explicit schedule as a JSON list, strictly descending and ending at 0, e.g. "
                    "[1.0, 0.7, 0.4, 0.0]; replaces everything else. Empty = none.",
                ),
                io.Float.Input(
                    "shift",
                    default=0.0,
                    min=0.0,
                    max=MAX_SHIFT,
                    step=0.01,
                    tooltip="Schedule shift; 0 = the model's own. FLUX: mu (FLUX.2 2.02, FLUX.1 1.15); "
                    "Wan: alpha as ModelSamplingSD3 (our workflows 5-8). Without a scheduler: 'simple'.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=MIN_DENOISE,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the noise schedule to run (image-to-image strength); 1 = all.",
                ),
            ],
            outputs=[io.Sigmas.Output(tooltip="The schedule for SamplerCustom(Advanced).")],
        )

    @classmethod
    def validate_inputs(
        cls, scheduler: str | None = None, custom_sigmas: str | None = None, shift: float | None = None,
        denoise: float | None = None,
    ) -> bool | str:  # fmt: skip
        if scheduler is None or custom_sigmas is None or shift is None or denoise is None:
            return True  # a linked input: checked when the node runs
        try:
            ScheduleOverride(scheduler, parse_sigmas(custom_sigmas), shift, denoise).check()
        except OverrideError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls, model: Any, sigmas: Any, scheduler: str, custom_sigmas: str, shift: float, denoise: float
    ) -> io.NodeOutput:
        override = ScheduleOverride(scheduler, parse_sigmas(custom_sigmas), shift, denoise)
        return io.NodeOutput(compute_sigmas(model, sigmas, override))


class DarkroomKSamplerSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomKSamplerSigmas",
            display_name="KSampler Schedule (darkroom)",
            category="darkroom/sampling",
            description="The schedule KSampler / KSamplerAdvanced would sample with (their own rules, not "
            "BasicScheduler's), or explicit sigmas; also split between two experts as a KSamplerAdvanced "
            "pair splits it. SamplerCustom fed from it samples exactly as those KSampler graphs do.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model the schedule is for (its sampling object, shift)."
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Steps, as KSampler's."),
                io.Combo.Input(
                    "sampler_name",
                    options=SAMPLER_NAMES,
                    default="euler",
                    tooltip="The sampler that will run the schedule: for uni_pc, uni_pc_bh2, dpm_2 and "
                    "dpm_2_ancestral KSampler schedules one step more and drops the penultimate sigma.",
                ),
                io.Combo.Input(
                    "scheduler", options=SCHEDULER_NAMES, default="simple", tooltip="As KSampler's."
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="As KSampler's: schedule int(steps / denoise) steps and run the last `steps`.",
                ),
                io.String.Input(
                    "custom_sigmas",
                    default="",
                    tooltip="Explicit schedule as a JSON list, strictly descending and ending at 0; replaces "
                    "steps, scheduler and the model's shift (denoise must stay 1). Empty = none.",
                ),
                io.Float.Input(
                    "handover",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Two-expert graphs (Wan 2.2 A14B): the first int(steps * handover) steps go to "
                    "high_sigmas, the rest to low_sigmas. 0 = one model (the split outputs are unused).",
                ),
            ],
            outputs=[
                io.Sigmas.Output(display_name="sigmas", tooltip="The whole schedule."),
                io.Sigmas.Output(display_name="high_sigmas", tooltip="The high-noise expert's part."),
                io.Sigmas.Output(display_name="low_sigmas", tooltip="The low-noise expert's part."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, steps: int | None = None, sampler_name: str | None = None, scheduler: str | None = None,
        denoise: float | None = None, custom_sigmas: str | None = None, handover: float | None = None,
    ) -> bool | str:  # fmt: skip
        """Named inputs skip ComfyUI's own checks, so all are checked here (None: a linked input)."""
        if steps is None or sampler_name is None or scheduler is None:
            return True
        if denoise is None or custom_sigmas is None or handover is None:
            return True
        try:
            _schedule(steps, sampler_name, scheduler, denoise, custom_sigmas, handover).check()
        except OverrideError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls, model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float, custom_sigmas: str,
        handover: float,
    ) -> io.NodeOutput:  # fmt: skip
        schedule = _schedule(steps, sampler_name, scheduler, denoise, custom_sigmas, handover)
        return io.NodeOutput(*schedule.compute(model))


def _schedule(
    steps: int, sampler: str, scheduler: str, denoise: float, custom_sigmas: str, handover: float
) -> KSamplerSchedule:
    return KSamplerSchedule(steps, sampler, scheduler, denoise, parse_sigmas(custom_sigmas), handover)


class DarkroomSamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSamplerSelect",
            display_name="Sampler Override (darkroom)",
            category="darkroom/sampling",
            description="Passes the workflow's sampler through, or replaces it by another of ComfyUI's.",
            inputs=[
                io.Sampler.Input("sampler", tooltip="The workflow's own sampler (e.g. from KSamplerSelect)."),
                io.Combo.Input(
                    "sampler_name",
                    options=[DEFAULT, *SAMPLER_NAMES],
                    default=DEFAULT,
                    tooltip="'default' keeps the workflow's sampler; a name picks that ComfyUI sampler.",
                ),
            ],
            outputs=[io.Sampler.Output(tooltip="The sampler for SamplerCustom(Advanced).")],
        )

    @classmethod
    def execute(cls, sampler: Any, sampler_name: str) -> io.NodeOutput:
        return io.NodeOutput(select_sampler(sampler, sampler_name))


NODES: list[type[io.ComfyNode]] = [DarkroomSigmas, DarkroomKSamplerSigmas, DarkroomSamplerSelect]

"""fal's ``acceleration`` (none | regular | high) as ComfyUI v0.8.0's own step caching.

A family's mapping declares the field from the shared block (``workflows/shared/extensions.yaml``) and
says only which cache its model takes, its default level (fal's) and which sampler inputs take the
model (``to``: "node.model")::

    acceleration: {shared: acceleration, cache: easy, default: regular, to: ["10.model"]}

``easy`` is ComfyUI's EasyCache, for models that run through ComfyUI's DIFFUSION_MODEL wrapper (FLUX.1
and FLUX.2, Wan, Qwen-Image, Z-Image, LTX, HunyuanVideo); ``lazy`` is LazyCache, which works one level
up (the sampler's noise prediction) and so on every model (SD 3.5). Either node goes between the
model and each sampler input named; ``none`` leaves the graph exactly as it is without the field.

Both caches estimate, from how much the model's output changed per unit of input change on the steps
they did evaluate, how much the output would change on the next step; while the change summed since
the last evaluation stays under ``reuse_threshold`` they add the last evaluated change to the input
instead of running the model. Only steps between ``start_percent`` and ``end_percent`` of the schedule
may be skipped. The levels:

- regular: threshold 0.2 between 15% and 95% of the schedule: ComfyUI's defaults for both nodes, the
  values its authors ship. The first 15% (where the composition forms) and the last 5% (fine detail)
  always run.
- high: threshold 0.4 from 10%: twice the change budget, so roughly twice as many consecutive steps
  may be reused between evaluations, starting a little earlier; faster, with more drift.

These are choices, not measurements: the speed and quality trade-off on real weights has not been
measured here (``scripts/bench_acceleration.py`` measures the tiny demo models' wall time only).
"""

from __future__ import annotations

from typing import Any

NONE = "none"
CACHE_NODES = {"easy": "EasyCache", "lazy": "LazyCache"}
LEVELS: dict[str, dict[str, float]] = {
    "regular": {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95},
    "high": {"reuse_threshold": 0.4, "start_percent": 0.10, "end_percent": 0.95},
}
# The demo twins' tiny random-weight models (manifest entries ``generated``) change their output about
# twice as much as their input per step: EasyCache's own estimate, read from its verbose log, was 1.5 to
# 2.5 on the FLUX.1, FLUX.2 and Wan twins at 8-12 steps, ten times and more the levels' thresholds.
# Under the levels above they reused no step in the runs tried, so on them the levels take thresholds
# near EasyCache's largest (3): the same nodes and wiring, now reusing single steps between
# evaluations, which the demos can show and the tests check. On the demos the two levels differ
# little; these numbers say nothing about real weights.
RANDOM_WEIGHT_THRESHOLDS = {"regular": 2.9, "high": 3.0}
_SAYS = {
    NONE: "every step evaluates the model (the graph without step caching)",
    "regular": "steps whose predicted change is small reuse the last evaluated change",
    "high": "more steps are reused, so it is faster and drifts more",
}


def check(name: str, values: list[str] | None, to: Any) -> str | None:
    """Why an acceleration field is declared wrong, or None: its levels, its targets."""
    unknown = set(values or []) - {NONE, *LEVELS}
    if unknown or NONE not in (values or []):
        return (
            f"{name}: levels must include 'none' and be among {[NONE, *LEVELS]}; unknown: {sorted(unknown)}"
        )
    if not isinstance(to, list) or not to or any(not t.endswith(".model") for t in to):
        return f"{name}: to lists the sampler inputs that take the model ('node.model')"
    return None


def describe(cache: str, values: list[str]) -> str:
    """The schema's description of the field: what each of the endpoint's levels does."""
    node = CACHE_NODES[cache]
    levels = "; ".join(
        f"'{level}': {_SAYS[level]}"
        + (
            f" ({node} reuse_threshold {LEVELS[level]['reuse_threshold']:g}, from "
            f"{LEVELS[level]['start_percent']:.0%} to {LEVELS[level]['end_percent']:.0%} of the schedule)"
            if level in LEVELS
            else ""
        )
        for level in values
    )
    return (
        f"Step caching (ComfyUI's {node}): {levels}. The response's timings count the model evaluations "
        "and the reused ones. Same request, seed and level: same output."
    )


def add_step_cache(
    prompt: dict[str, Any], targets: list[str], cache: str, level: str, *, random_weights: bool = False
) -> None:
    """Put the cache node of ``level`` between the model and each target input (in place); ``none``
    changes nothing. ``random_weights``: the models are the demos' tiny ones (see
    RANDOM_WEIGHT_THRESHOLDS)."""
    if level == NONE:
        return
    settings = LEVELS[level]
    if random_weights:
        settings = {**settings, "reuse_threshold": RANDOM_WEIGHT_THRESHOLDS[level]}
    next_id = 1 + max((int(node) for node in prompt if node.isdigit()), default=0)
    for target in targets:
        node_id, _, input_name = target.partition(".")
        source = prompt[node_id]["inputs"][input_name]
        cache_id = str(next_id)
        next_id += 1
        prompt[cache_id] = {
            "class_type": CACHE_NODES[cache],
            "inputs": {"model": source, **settings, "verbose": False},
            "_meta": {"title": f"acceleration: {level}"},
        }
        prompt[node_id]["inputs"][input_name] = [cache_id, 0]

"""The image safety checker in a mapping: the field that switches it, the node it puts in the graph, the
verdicts the response carries, and the warning when its weights are absent.

A boolean field with a ``checker`` (``enable_safety_checker``, from ``workflows/shared/extensions.yaml``)
names the classifier's manifest entry. On, the graph gets a ``DarkroomSafetyChecker`` between the images
and the save node, which describes each file with its verdict; off, the graph is the workflow's own and
nothing is checked. ``has_nsfw_concepts`` is then one entry per image: true (flagged, and replaced by
black), false (checked, not flagged) or null (nothing checked: the field is off, the endpoint has no
checker, or the classifier's weights are absent). A null is never reported as false.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.models import Manifest, ModelKind
from server.workflows.request_schema import ParamSpec

CHECKER_NODE = "darkroom_safety_checker"
CHECKER_CLASS = "DarkroomSafetyChecker"
SAVE_CLASSES = ("DarkroomSaveImage", "DarkroomSaveVideo")
SAMPLED_FRAMES = 8  # a video's frames the classifier sees, evenly spaced, first and last included


@dataclass(frozen=True)
class Verdicts:
    """What the response and the status logs say about the check: a flag per image, and why none ran."""

    flags: list[bool | None]
    note: str | None = None  # set when nothing (or not everything) was checked
    failed: bool = False  # the check was asked for and did not run (its weights are absent)

    @property
    def flagged(self) -> int:
        return sum(flag is True for flag in self.flags)


def check_spec(name: str, spec: ParamSpec, manifest: Manifest, output_class: str | None) -> str | None:
    """What is wrong with a checker field (None when nothing is): a boolean on an endpoint whose output
    node is darkroom's image or video save node, naming a safety_checker entry of the manifest."""
    if spec.checker is None:
        return None
    if spec.type != "boolean" or spec.to:
        return f"{name}: a field with a checker is a boolean with no targets"
    if output_class not in SAVE_CLASSES:
        return (
            f"{name}: the safety checker needs a {' or '.join(SAVE_CLASSES)} output node, not {output_class}"
        )
    entry = manifest.models.get(spec.checker)
    if entry is None or entry.kind != ModelKind.SAFETY_CHECKER:
        return f"{name}: checker {spec.checker!r} is not a safety_checker entry of the manifest"
    return None


def checker_field(params: Mapping[str, ParamSpec]) -> str | None:
    """The request field that switches the safety checker, if the endpoint has one."""
    return next((name for name, spec in params.items() if spec.checker), None)


def insert_checker(prompt: dict[str, Any], output_node: str, checker_file: str, *, video: bool) -> None:
    """Put the checker between the save node and the images it saves; the save node gets its verdicts.
    A video's frames are one verdict, from SAMPLED_FRAMES of them."""
    save = prompt[output_node]["inputs"]
    sampled = SAMPLED_FRAMES if video else 0
    prompt[CHECKER_NODE] = {
        "class_type": CHECKER_CLASS,
        "inputs": {"images": save["images"], "checker_name": checker_file, "sample_frames": sampled},
        "_meta": {"title": "Safety checker"},
    }
    save["images"] = [CHECKER_NODE, 0]
    save["safety"] = [CHECKER_NODE, 1]


def verdicts(
    params: Mapping[str, ParamSpec], resolved: Mapping[str, Any], saved: Sequence[Mapping[str, Any]]
) -> Verdicts:
    """The verdicts of one run, from its resolved fields and the save node's file descriptions."""
    field = checker_field(params)
    if field is None:
        return Verdicts([None] * len(saved), "this endpoint has no safety checker: nothing was checked")
    if not resolved.get(field):
        return Verdicts([None] * len(saved), f"{field} is false: no safety checker ran")
    flags = [entry.get("has_nsfw_concept") for entry in saved]
    if all(isinstance(flag, bool) for flag in flags):
        return Verdicts([bool(flag) for flag in flags])
    notes = sorted({str(entry.get("safety_note") or "the safety checker did not run") for entry in saved})
    return Verdicts([flag if isinstance(flag, bool) else None for flag in flags], "; ".join(notes), True)


def missing_checkers(
    endpoints: Iterable[tuple[str, Mapping[str, ParamSpec]]], manifest: Manifest, models_dir: Path
) -> list[str]:
    """A start-up warning per absent classifier: the endpoints whose checks it would run, and the fix."""
    waiting: dict[str, list[str]] = {}
    for app_id, params in endpoints:
        field = checker_field(params)
        if field is not None and params[field].checker is not None:
            waiting.setdefault(params[field].checker or "", []).append(app_id)
    warnings = []
    for name, app_ids in sorted(waiting.items()):
        if manifest.missing([name], models_dir):
            shown = ", ".join(sorted(app_ids)[:4]) + (
                f" and {len(app_ids) - 4} more" if len(app_ids) > 4 else ""
            )
            warnings.append(
                f"the safety checker's weights ({manifest.get(name).file}) are absent: {shown} run unchecked "
                f"and answer has_nsfw_concepts null while enable_safety_checker is on; run "
                f"`{manifest.command_for(name)}`"
            )
    return warnings

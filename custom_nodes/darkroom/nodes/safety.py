"""The image safety checker: classifies decoded images, blackens the flagged ones and hands the verdicts
to the save node, which puts them beside each file for the API's ``has_nsfw_concepts``. Node ids are
public API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..formats.overrides import check_file_name
from ..formats.safety import checked, unchecked
from ..ops.safety import blacken, classify, load_classifier, sampled_frames

log = logging.getLogger(__name__)

FOLDER = "safety_checkers"
MAX_SAMPLED = 64


class DarkroomSafetyChecker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSafetyChecker",
            display_name="Safety Checker (darkroom)",
            category="darkroom/image",
            description="Runs an NSFW image classifier on each image; flagged images are replaced by black "
            "of the same size (as fal does). Without the classifier's file the images pass unchanged and "
            "the verdicts say that nothing was checked.",
            inputs=[
                io.Image.Input("images", tooltip="The decoded images to check."),
                io.String.Input(
                    "checker_name",
                    default="",
                    tooltip=f"The classifier's file in models/{FOLDER} (a ViT in transformers' layout, e.g. "
                    "Falconsai/nsfw_image_detection). Absent: nothing is checked, and the verdicts say so.",
                ),
                io.Int.Input(
                    "sample_frames",
                    default=0,
                    min=0,
                    max=MAX_SAMPLED,
                    tooltip="0: each image is checked on its own. N: the images are one video's frames; "
                    "N of them, evenly spaced, are checked, and a flag on any blackens the whole video "
                    "(one verdict).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.String.Output(display_name="verdicts"),
            ],
        )

    @classmethod
    def execute(cls, images: Any, checker_name: str, sample_frames: int = 0) -> io.NodeOutput:
        found = None
        if checker_name:
            found = folder_paths.get_full_path(FOLDER, check_file_name(checker_name, "checker_name"))
        if found is None:
            note = f"the safety checker's weights ({FOLDER}/{checker_name}) are absent: nothing was checked"
            log.warning("%s", note)
            return io.NodeOutput(images, unchecked(note))
        model = load_classifier(Path(found))
        if sample_frames:
            frames = sampled_frames(len(images), sample_frames)
            flagged = any(classify(model, images[frames]))
            flags = [flagged] * len(images)
            verdict = checked([flagged])
        else:
            flags = classify(model, images)
            verdict = checked(flags)
        if any(flags):
            log.info("safety checker %s flagged %d of %d image(s)", checker_name, sum(flags), len(flags))
        return io.NodeOutput(blacken(images, flags), verdict)


NODES: list[type[io.ComfyNode]] = [DarkroomSafetyChecker]

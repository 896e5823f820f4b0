"""Each fal endpoint answers fal's output shape: exactly the answer's fields, and each file with every
field of fal's type of it (LTX-2's VideoFile with the video's sizes, fps, num_frames and duration; Wan's and
HunyuanVideo's File; a trainer's Files).

fal_outputs.yaml is derived from ../shared/docs/fal-catalog/ by scripts/fal_outputs.py, so drift fails
here. The answer is built by the generator's own response step from files described as the save nodes
describe them. A file may carry more than fal's type of it, and only these details: a video's (Wan's and
HunyuanVideo's videos are described as a VideoFile too, whose duration the usage meter bills) and an
image's sizes (Wan text-to-image's File; the meter's megapixels). Image lists are compared by their
fields only: fal's entries give their images several types (ImageFile, ImageType2 without file_name and
file_size), and darkroom answers one Image for all. The output checker is off here: with it on, a video
or single-image answer also carries darkroom's has_nsfw_concepts (tests/unit/server/workflows/
test_safety.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.engine.models import load_manifest
from server.generation.generator import ModelCalls, _response
from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints
from server.workflows.safety import Verdicts, checker_field

FAL_OUTPUTS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "fal_outputs.yaml").read_text())
ENDPOINTS = load_endpoints(WORKFLOWS_DIR, load_manifest())
SERVED = sorted(app for app in ENDPOINTS if app in FAL_OUTPUTS)
FILE = {"url": "https://files.example/o/0", "content_type": "x/y", "file_name": "0", "file_size": 1234}
SIZES = {"width": 64, "height": 48}
DETAILS = {**SIZES, "fps": 8.0, "num_frames": 9, "duration": 1.125}  # a VideoFile's beyond its File's
# What the generator has of each answered file, by output kind, as the save nodes report them
DESCRIBED = {"video": FILE | DETAILS, "image": FILE | SIZES, "images": FILE | SIZES, "lora": FILE}
# Optional output fields (no "!" in the catalog) darkroom leaves out: fal's flux-lora-fast-training
# answers its preprocessed data set (crops and masks) for debugging; darkroom preprocesses nothing to show.
ABSENT = {"fal-ai/flux-lora-fast-training": {"debug_preprocessed_output"}}


def test_every_video_endpoint_of_these_families_is_checked() -> None:
    # fal_outputs.yaml follows fal_fields.py's list: an endpoint added there needs scripts/fal_outputs.py
    # run again to be checked here. Wan 2.2 5B image-to-video is not in the catalog (NOT_IN_CATALOG).
    videos = {app for app, e in ENDPOINTS.items() if e.output.kind == "video" and app.startswith("fal-ai/")}
    families = (
        "fal-ai/ltx-2-19b/",
        "fal-ai/hunyuan-video-v1.5/",
        "fal-ai/wan/v2.2-a14b/",
        "fal-ai/wan/v2.2-5b/",
    )
    ours = {app for app in videos if app.startswith(families)}
    assert len(ours) >= 14 and ours - set(SERVED) == {"fal-ai/wan/v2.2-5b/image-to-video"}


@pytest.mark.parametrize("app_id", SERVED)
def test_the_answer_has_fals_output_fields_and_each_file_its_types_fields(app_id: str) -> None:
    endpoint, fal = ENDPOINTS[app_id], FAL_OUTPUTS[app_id]
    resolved: dict[str, Any] = {"seed": 7, "prompt": "a fox"}
    if field := checker_field(endpoint.params):
        resolved[field] = False
    described = DESCRIBED[endpoint.output.kind]
    files = [dict(described), dict(described)]  # two: a trainer answers its LoRA and its config
    answer = _response(endpoint, files, resolved, 0.5, Verdicts([None, None], "off"), ModelCalls())
    absent = ABSENT.get(app_id, set())
    assert sorted(answer) == [name for name in fal["output"] if name not in absent]
    for name, fields in ((n, f) for n, f in fal["files"].items() if n not in absent):
        if endpoint.output.kind != "images":
            assert set(fields) <= answer[name].keys() and answer[name].keys() - set(fields) <= DETAILS.keys()
            assert all(answer[name][k] == described[k] for k in answer[name]), "as the save node gave them"

"""A workflow marked for publishing, as the editor would export it: the tiny FLUX.2 demo graph with
darkroom's input nodes in front of the values a request may set (import as `tests.marked`)."""

from __future__ import annotations

import copy
import json
from typing import Any

from server.engine.models import Manifest
from server.settings import PROJECT_ROOT

MODELS = {
    "1.model_name": "tiny-flux2-fp8-scaled",
    "2.text_encoder_name": "tiny-mistral3-flux2",
    "3.vae_name": "tiny-flux2-vae",
}
INPUT_NODES: dict[str, dict[str, Any]] = {
    "20": {
        "class_type": "DarkroomInputText",
        "inputs": {"field": "prompt", "value": "a lighthouse", "required": True, "max_length": 500},
    },
    "21": {
        "class_type": "DarkroomInputImageSize",
        "inputs": {
            "field": "image_size", "width": 64, "height": 48,
            "min_side": 16, "max_side": 256, "multiple_of": 16,
        },
    },
    "22": {
        "class_type": "DarkroomInputInt",
        "inputs": {"field": "num_inference_steps", "value": 2, "min": 1, "max": 8, "step": 1},
    },
    "23": {"class_type": "DarkroomInputSeed", "inputs": {"field": "seed", "value": 7}},
    "24": {
        "class_type": "DarkroomInputFloat",
        "inputs": {"field": "guidance_scale", "value": 2.5, "min": 0.0, "max": 10.0, "step": 0.1},
    },
    "25": {"class_type": "DarkroomInputLoras", "inputs": {"field": "loras", "value": "[]", "max_count": 4}},
    "26": {
        "class_type": "DarkroomInputChoice",
        "inputs": {"field": "output_format", "choices": "png, jpeg", "value": "png"},
    },
}  # fmt: skip
LINKS = {
    "4.text": ["20", 0], "6.width": ["21", 0], "6.height": ["21", 1], "7.width": ["21", 0],
    "7.height": ["21", 1], "7.steps": ["22", 0], "8.noise_seed": ["23", 0], "5.guidance": ["24", 0],
    "14.loras": ["25", 0], "13.format": ["26", 0],
}  # fmt: skip


def marked_flux2(manifest: Manifest) -> dict[str, Any]:
    """The API-format prompt: FLUX.2's graph on the tiny models, its request values from input nodes."""
    prompt: dict[str, Any] = json.loads((PROJECT_ROOT / "workflows" / "flux2-t2i.json").read_text())
    for target, model in MODELS.items():
        node_id, name = target.split(".")
        prompt[node_id]["inputs"][name] = manifest.get(model).folder_name
    for target, link in LINKS.items():
        node_id, name = target.split(".")
        prompt[node_id]["inputs"][name] = link
    prompt.update(copy.deepcopy(INPUT_NODES))
    return prompt


def set_input(prompt: dict[str, Any], node_id: str, name: str, value: Any) -> dict[str, Any]:
    """A copy of prompt with one node input changed."""
    changed = copy.deepcopy(prompt)
    changed[node_id]["inputs"][name] = value
    return changed


def marked_flux2_edit(manifest: Manifest) -> dict[str, Any]:
    """An image-to-image variant: the request's ``image_url`` (DarkroomInputImage) is encoded as the start
    latent (at its own size) and 60 % of the schedule runs over it."""
    prompt = marked_flux2(manifest)
    for node_id in ("6", "21"):
        del prompt[node_id]
    image = {"field": "image_url", "image": "example.png"}
    prompt["30"] = {"class_type": "DarkroomInputImage", "inputs": image}
    prompt["31"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["30", 0], "vae": ["15", 1]}}
    prompt["7"]["inputs"].update(width=["30", 1], height=["30", 2])
    prompt["11"]["inputs"]["latent_image"] = ["31", 0]
    prompt["16"]["inputs"]["denoise"] = 0.6
    return prompt

"""LoRA training nodes around ComfyUI's own (comfy_extras/nodes_train.py's TrainLoraNode): the data set a
request brought, a seeded run, and the trained file saved in the key format the request asked for.

ComfyUI's trainer draws the LoRA's initial weights, each step's noise level and its batch from torch's
global generator, which nothing seeds: ``DarkroomTrainLora`` runs the stock node with that generator
seeded from the node's ``seed`` (and restored afterwards), so the same data set and seed give the same
LoRA. ``DarkroomTrainingSet`` reads the images in name order (ComfyUI's folder loader takes them in
the file system's order). ``DarkroomSaveLora`` writes the LoRA and a JSON config (the run's settings
and loss curve) and reports both to the API the way the save-image node reports images.
"""

from __future__ import annotations

import json
import os
from typing import Any

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from comfy_extras import nodes_train
from PIL import Image, ImageOps

from ..formats.lora_keys import LoraFormat, render
from ..ops.train_fit import check_fits
from ..ops.train_progress import reporting_losses
from ..ops.training import enable_rope_backward

CATEGORY = "darkroom/training"
LORA_CONTENT_TYPE = "application/octet-stream"
CONFIG_CONTENT_TYPE = "application/json"


class DarkroomTrainingSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomTrainingSet",
            display_name="Darkroom Training Set",
            category=CATEGORY,
            description="Images (*.png, in name order) and their same-named .txt captions from a folder "
            "of the input directory, each centre-cropped to a square and scaled to the resolution.",
            inputs=[
                io.String.Input("folder", default="", tooltip="A folder inside ComfyUI's input directory."),
                io.Int.Input(
                    "resolution", default=512, min=16, max=4096, step=16, tooltip="Square side in px."
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True),
                io.String.Output(display_name="texts", is_output_list=True),
            ],
        )

    @classmethod
    def execute(cls, folder: str, resolution: int) -> io.NodeOutput:
        root = os.path.realpath(folder_paths.get_input_directory())
        path = os.path.realpath(os.path.join(root, folder))
        if os.path.commonpath([root, path]) != root or not os.path.isdir(path):
            raise ValueError(f"training set {folder!r} is not a folder of the input directory")
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
        if not names:
            raise ValueError(f"training set {folder!r} holds no .png images")
        images, texts = [], []
        for name in names:
            with Image.open(os.path.join(path, name)) as opened:
                square = ImageOps.fit(
                    opened.convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS
                )
            images.append(torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0)[None])
            caption = os.path.join(path, os.path.splitext(name)[0] + ".txt")
            texts.append(_read_text(caption) if os.path.exists(caption) else "")
        return io.NodeOutput(images, texts)


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """The diffusion model's state-dict shapes (keep_vars: the trainer's parameters are not detached)."""
    state = model.model.diffusion_model.state_dict(keep_vars=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def _forget(module: Any) -> None:
    """Drop every loaded-model entry of the module the trainer ran on. ComfyUI's trainer loads and patches
    it outside inference mode, and ComfyUI's loader then fails on its tensors ("Cannot set
    version_counter for inference tensor") when a later prompt moves or measures it; so it is not
    unloaded (that moves it too) but forgotten, and the training graph loads its model under a cache key
    of its own (see workflows/flux2-train.json), so no generation reuses it."""
    loaded = comfy.model_management.current_loaded_models
    loaded[:] = [entry for entry in loaded if getattr(entry.model, "model", None) is not module]
    comfy.model_management.soft_empty_cache()


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class DarkroomTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        schema = nodes_train.TrainLoraNode.define_schema()
        schema.node_id = "DarkroomTrainLora"
        schema.display_name = "Darkroom Train LoRA (seeded)"
        schema.category = CATEGORY
        schema.description = (
            "ComfyUI's Train LoRA with torch's global generator seeded from `seed`, each step's loss "
            "reported live, and a run that will not fit the device's memory refused before it starts."
        )
        schema.inputs.append(
            io.Float.Input(
                "memory_limit_gb",
                default=0.0,
                min=0.0,
                max=1e6,
                optional=True,
                tooltip="The device memory a run may plan for (0: the device's total).",
            )  # fmt: skip
        )
        return schema

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        check_fits(inputs, float((inputs.pop("memory_limit_gb", None) or [0.0])[0]))
        enable_rope_backward()
        try:
            with torch.random.fork_rng(), reporting_losses():
                torch.manual_seed(int(inputs["seed"][0]))
                return nodes_train.TrainLoraNode.execute(**inputs)
        finally:
            _forget(inputs["model"][0].model)


class DarkroomSaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSaveLora",
            display_name="Darkroom Save LoRA",
            category=CATEGORY,
            description="Save a trained LoRA (ComfyUI's or diffusers' key names) and its config (settings "
            "and loss curve, JSON) for the API to serve.",
            inputs=[
                io.Custom("LORA_MODEL").Input("lora"),
                io.Custom("LOSS_MAP").Input("loss"),
                io.Model.Input("model", tooltip="The model it was trained on (its layer names)."),
                io.Combo.Input(
                    "format",
                    options=["fal", "comfy"],
                    default="fal",
                    tooltip="fal: diffusers/PEFT names (transformer.*); comfy: ComfyUI's (diffusion_model.*)",
                ),  # fmt: skip
                io.String.Input(
                    "settings", default="{}", multiline=True, tooltip="The run's settings (JSON)."
                ),
                io.String.Input("filename_prefix", default="darkroom/lora"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, lora: dict[str, torch.Tensor], loss: dict[str, list[float]], model: Any, format: str,  # noqa: A002
        settings: str, filename_prefix: str,
    ) -> io.NodeOutput:  # fmt: skip
        tensors = {k: v.detach().cpu().contiguous() for k, v in sorted(lora.items())}
        if format == "fal":
            tensors = render(tensors, _shapes(model), LoraFormat.DIFFUSERS)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        stem = f"{name}_{counter:05}_"
        comfy.utils.save_torch_file(tensors, os.path.join(folder, stem + ".safetensors"))
        curve = [float(v) for v in loss.get("loss", [])]
        config = {"settings": json.loads(settings or "{}"), "lora_format": format, "loss": curve}
        with open(os.path.join(folder, stem + ".json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        files = [
            {"filename": stem + ".safetensors", "subfolder": subfolder, "type": "output",
             "content_type": LORA_CONTENT_TYPE, "role": "lora", "tensors": len(tensors)},
            {"filename": stem + ".json", "subfolder": subfolder, "type": "output",
             "content_type": CONFIG_CONTENT_TYPE, "role": "config", "steps": len(curve)},
        ]  # fmt: skip
        return io.NodeOutput(ui={"images": files})


NODES: list[type[io.ComfyNode]] = [DarkroomTrainingSet, DarkroomTrainLora, DarkroomSaveLora]

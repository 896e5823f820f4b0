"""Input nodes: mark the values of a workflow that an API request may set.

In the editor each is an ordinary value node (its ``value`` flows out unchanged), so a marked workflow
runs there as it is. When the workflow is published, darkroom reads these nodes from the API-format
prompt: ``field`` becomes the request field, ``value`` its default, the bounds and choices its schema,
and a request's value replaces ``value`` (the image's ``image``, the size's ``width``/``height``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import folder_paths
from comfy_api.latest import io

CATEGORY = "darkroom/inputs"
MIN_SIDE = 16  # the smallest image side the size node (and a latent) takes
SEED_MAX = 2**64 - 1  # as KSampler's noise seed; requests may send up to 2**63 - 1
_FIELD_TIP = "The request field this sets (a lower-case identifier, e.g. prompt)."
_DESCRIPTION_TIP = "What the field does, shown in the endpoint's schema and playground."


def _common(field: str) -> list[io.Input]:
    return [
        io.String.Input("field", default=field, tooltip=_FIELD_TIP),
        io.String.Input("description", default="", multiline=True, optional=True, tooltip=_DESCRIPTION_TIP),
    ]


def _schema(
    node_id: str, name: str, description: str, inputs: list[io.Input], outputs: list[io.Output]
) -> io.Schema:
    return io.Schema(
        node_id=node_id,
        display_name=f"Darkroom Input {name}",
        category=CATEGORY,
        description=description,
        inputs=inputs,
        outputs=outputs,
    )


class DarkroomInputText(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputText",
            "Text",
            "A text field (a prompt, a negative prompt, a name).",
            [
                *_common("prompt"),
                io.String.Input(
                    "value", default="", multiline=True, tooltip="The text; the field's default."
                ),
                io.Boolean.Input("required", default=True, tooltip="Whether a request must send it."),
                io.Int.Input(
                    "max_length", default=10000, min=1, max=1_000_000, tooltip="Longest text accepted."
                ),
            ],
            [io.String.Output("text")],
        )

    @classmethod
    def execute(
        cls, field: str, value: str, required: bool, max_length: int, description: str = ""
    ) -> io.NodeOutput:
        return io.NodeOutput(value)


class DarkroomInputInt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputInt",
            "Int",
            "A whole number with bounds (steps, frames, a count).",
            [
                *_common("num_inference_steps"),
                io.Int.Input("value", default=0, min=-(2**53), max=2**53, tooltip="The number; the default."),
                io.Int.Input("min", default=0, min=-(2**53), max=2**53, tooltip="Smallest value accepted."),
                io.Int.Input("max", default=100, min=-(2**53), max=2**53, tooltip="Largest value accepted."),
                io.Int.Input("step", default=1, min=1, max=2**32, tooltip="Editor widget step."),
            ],
            [io.Int.Output("value_out", display_name="value")],
        )

    @classmethod
    def execute(
        cls, field: str, value: int, min: int, max: int, step: int, description: str = ""
    ) -> io.NodeOutput:  # noqa: A002
        return io.NodeOutput(value)


class DarkroomInputFloat(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputFloat",
            "Float",
            "A number with bounds (guidance, strength, shift).",
            [
                *_common("guidance_scale"),
                io.Float.Input(
                    "value", default=0.0, min=-1e9, max=1e9, step=0.01, tooltip="The number; the default."
                ),
                io.Float.Input(
                    "min", default=0.0, min=-1e9, max=1e9, step=0.01, tooltip="Smallest value accepted."
                ),
                io.Float.Input(
                    "max", default=1.0, min=-1e9, max=1e9, step=0.01, tooltip="Largest value accepted."
                ),
                io.Float.Input(
                    "step", default=0.01, min=0.0, max=1e9, step=0.001, tooltip="Editor widget step."
                ),
            ],
            [io.Float.Output("value_out", display_name="value")],
        )

    @classmethod
    def execute(
        cls,
        field: str,
        value: float,
        min: float,
        max: float,
        step: float,
        description: str = "",  # noqa: A002
    ) -> io.NodeOutput:
        return io.NodeOutput(value)


class DarkroomInputBoolean(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputBoolean",
            "Boolean",
            "An on/off switch.",
            [*_common("enable_feature"), io.Boolean.Input("value", default=False, tooltip="The default.")],
            [io.Boolean.Output("value_out", display_name="value")],
        )

    @classmethod
    def execute(cls, field: str, value: bool, description: str = "") -> io.NodeOutput:
        return io.NodeOutput(value)


def parse_choices(choices: str) -> list[str]:
    """``"a, b"`` or one per line -> ["a", "b"] (blank entries dropped)."""
    return [c.strip() for c in choices.replace("\n", ",").split(",") if c.strip()]


class DarkroomInputChoice(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputChoice",
            "Choice",
            "One of a list of strings; its output fits text inputs and dropdowns (a sampler, a format).",
            [
                *_common("output_format"),
                io.String.Input(
                    "choices",
                    default="png, jpeg",
                    multiline=True,
                    tooltip="The allowed values, comma- or line-separated.",
                ),
                io.String.Input("value", default="png", tooltip="The default; one of the choices."),
            ],
            [io.AnyType.Output("choice")],
        )

    @classmethod
    def validate_inputs(cls, choices: str, value: str, **_: Any) -> bool | str:
        allowed = parse_choices(choices)
        if not allowed:
            return "choices is empty: list the allowed values, comma- or line-separated"
        if value not in allowed:
            return f"value {value!r} is not one of the choices {allowed}"
        return True

    @classmethod
    def execute(cls, field: str, choices: str, value: str, description: str = "") -> io.NodeOutput:
        return io.NodeOutput(value)


class DarkroomInputSeed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputSeed",
            "Seed",
            "The seed: random when a request leaves it out; the seed used is returned as `seed`.",
            [
                *_common("seed"),
                io.Int.Input(
                    "value",
                    default=0,
                    min=0,
                    max=SEED_MAX,
                    control_after_generate=True,
                    tooltip="The seed the editor runs with.",
                ),
            ],
            [io.Int.Output("seed_out", display_name="seed")],
        )

    @classmethod
    def execute(cls, field: str, value: int, description: str = "") -> io.NodeOutput:
        return io.NodeOutput(value)


def _input_images() -> list[str]:
    folder = folder_paths.get_input_directory()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["image"]))


class DarkroomInputImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputImage",
            "Image",
            "An input image: uploaded in the editor; a URL, data URI or upload in a request (fetched "
            "under darkroom's address policy).",
            [
                *_common("image_url"),
                io.Combo.Input(
                    "image",
                    options=_input_images(),
                    upload=io.UploadType.image,
                    tooltip="The editor's image.",
                ),
            ],
            [
                io.Image.Output("image_out", display_name="image"),
                io.Int.Output("width"),
                io.Int.Output("height"),
            ],
        )

    @classmethod
    def validate_inputs(cls, image: str, **_: Any) -> bool | str:
        if not folder_paths.exists_annotated_filepath(image):
            return f"Invalid image file: {image}"
        return True

    @classmethod
    def fingerprint_inputs(cls, image: str, **_: Any) -> str:
        with open(folder_paths.get_annotated_filepath(image), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def execute(cls, field: str, image: str, description: str = "") -> io.NodeOutput:
        import nodes  # ComfyUI's; LoadImage's decoding (EXIF rotation, 16-bit, frames)

        pixels, _mask = nodes.LoadImage().load_image(image)
        return io.NodeOutput(pixels, int(pixels.shape[2]), int(pixels.shape[1]))


class DarkroomInputImageSize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        side = {"min": MIN_SIDE, "max": 16384, "step": 8}  # as EmptyLatentImage: widgets snap to min + k*step
        return _schema(
            "DarkroomInputImageSize",
            "Image Size",
            "Width and height: a request sends one of fal's presets (square_hd, landscape_4_3, ...) or "
            "{width, height}; sides are rounded down to a multiple of `multiple_of`.",
            [
                *_common("image_size"),
                io.Int.Input("width", default=1024, **side, tooltip="The default width (px)."),
                io.Int.Input("height", default=1024, **side, tooltip="The default height (px)."),
                io.Int.Input(
                    "min_side", default=64, min=MIN_SIDE, max=16384, tooltip="Smallest side accepted (px)."
                ),
                io.Int.Input(
                    "max_side", default=2048, min=1, max=16384, tooltip="Largest side accepted (px)."
                ),
                io.Int.Input(
                    "multiple_of", default=16, min=1, max=256, tooltip="Sides are rounded down to this."
                ),
            ],
            [
                io.Int.Output("width_out", display_name="width"),
                io.Int.Output("height_out", display_name="height"),
            ],
        )

    @classmethod
    def execute(
        cls,
        field: str,
        width: int,
        height: int,
        min_side: int,
        max_side: int,
        multiple_of: int,
        description: str = "",
    ) -> io.NodeOutput:
        return io.NodeOutput(width, height)


class DarkroomInputLoras(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "DarkroomInputLoras",
            "Loras",
            "The `loras` list of a request ({path, scale}), for a Darkroom LoRA Stack's `loras` input.",
            [
                *_common("loras"),
                io.String.Input(
                    "value",
                    default="[]",
                    multiline=True,
                    tooltip='The editor\'s list, JSON: [{"path": "x.safetensors", "scale": 1}].',
                ),
                io.Int.Input(
                    "max_count", default=8, min=1, max=64, tooltip="Most LoRAs a request may stack."
                ),
            ],
            [io.String.Output("loras_out", display_name="loras")],
        )

    @classmethod
    def execute(cls, field: str, value: str, max_count: int, description: str = "") -> io.NodeOutput:
        return io.NodeOutput(value)


NODES: list[type[io.ComfyNode]] = [
    DarkroomInputText,
    DarkroomInputInt,
    DarkroomInputFloat,
    DarkroomInputBoolean,
    DarkroomInputChoice,
    DarkroomInputSeed,
    DarkroomInputImage,
    DarkroomInputImageSize,
    DarkroomInputLoras,
]

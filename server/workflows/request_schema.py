"""Request parameters as a mapping file declares them (``ParamSpec``), and the request bodies: pydantic
models built at start-up from each endpoint's parameters.

The models give fal's 422 details for free: the field, what is wrong, and the allowed range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    model_validator,
)

from server.errors import InputError
from server.json_types import JsonInt, json_int
from server.security.untrusted import check_name, parse_url

IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
SEED_MAX = 2**63 - 1
AUTO = "auto"
DEFAULT = "default"
URI = {"format": "uri"}

ParamType = Literal[
    "string", "integer", "number", "boolean", "enum", "image_size", "seed", "image_url", "image_urls",
    "video_url", "audio_url", "archive_url", "loras", "sampler", "scheduler", "sigmas", "model_file",
    "model_blend", "object",
]  # fmt: skip


class ParamSpec(BaseModel):
    """One request field. `to` lists the "node_id.input" targets it sets (image_size: per side). An
    `object` is one of fal's structured fields (a ControlNet, an IP-Adapter) that no graph reads: it is
    declared with ``honoured: [null]``, so sending one is a 422 giving `unhonoured` as the reason."""

    model_config = ConfigDict(extra="forbid")
    type: ParamType
    description: str = ""
    required: bool = False
    default: Any = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    values: list[str] | None = Field(
        default=None,
        description='enum: its values; image_size with size_from: names beyond the presets ("auto") that '
        "mean the size_from image's size",
    )
    multiple_of: int | None = Field(default=None, description="image_size: sides rounded down to this")
    family: str | None = Field(default=None, description="model_blend: the DarkroomModelBlend family")
    size_from: str | None = Field(
        default=None,
        description="image_size without a default: left out, the size of the first image of this "
        "image_url(s) field (fitted into the bounds, aspect kept); a field of another type (a resolution "
        "mode whose one honoured value is 'the input's size'): always that size",
    )
    auto_from: str | None = Field(
        default=None, description='enum of "W:H" ratios: "auto" picks the one nearest this image_url input'
    )
    to: list[str] | dict[str, list[str]] = Field(default_factory=list)
    advanced: bool = Field(
        default=False, description="beyond fal's schema: the playground shows it under Advanced"
    )
    absent_removes: list[str] = Field(
        default_factory=list,
        description='optional fields: "node_id.input" links and "node_id" nodes dropped when it is left out',
    )
    off_removes: list[str] = Field(
        default_factory=list,
        description='boolean fields: "node_id.input" links and "node_id" nodes dropped when it is false',
    )
    honoured: list[Any] | None = Field(
        default=None,
        description="fal's fields darkroom cannot fully honour: the values it can. A request that sends "
        "another gets a 422 giving `unhonoured` as the reason; one that leaves the field out gets fal's "
        "default in the schema and darkroom's behaviour the description states",
    )
    unhonoured: str = Field(default="", description="why the values outside `honoured` are refused")
    checker: str | None = Field(
        default=None,
        description="a boolean that switches the image safety checker: the classifier's manifest name. "
        "True puts a DarkroomSafetyChecker between the output node and the images it saves",
    )
    cache: Literal["easy", "lazy"] | None = Field(
        default=None,
        description="acceleration: ComfyUI's step cache for this model (EasyCache or LazyCache), put "
        "before each sampler input in `to`; see server/workflows/acceleration.py",
    )


def _input_url(value: str) -> str:
    """A URL field: a data: URI, or a URL the one parser takes (a 422 at submit, never a 500 later)."""
    if not value.startswith("data:"):
        try:
            parse_url(value)
        except ValueError as e:
            raise ValueError(f"{e}; expected an https:// URL or a data: URI") from None
    return value


def _lora_path(value: str) -> str:
    """A LoRA: an http(s) URL the one parser takes (an hf:// path too, as the URL it becomes), or a name
    a file system could hold."""
    if value.startswith(("https://", "http://")):
        parse_url(value)
    elif value.startswith("hf://"):
        parse_url("https://huggingface.co/" + value.removeprefix("hf://"))
    return check_name(value)


InputUrl = Annotated[str, AfterValidator(_input_url)]
# What check_name takes, for the document: no control characters, "/"-separated parts of at most 255
# bytes. A JSON Schema counts characters, not UTF-8 bytes: the pattern takes the parts surely short
# enough, a subset of what the server takes: 255 ASCII characters; or 63 of any kind starting with a
# non-ASCII one; or up to 31 ASCII ones, a non-ASCII one and up to 31 more. No two branches match the
# same text, so a backtracking engine (Python's re, a JS validator) checks a name in linear time; the
# former branches overlapped (ASCII in both) and backtracked exponentially on a long name failing at its
# end. It ends in (?![\s\S]), not $, which in Python's re also matches before a final newline.
_ASCII, _WIDE, _ANY = r"[ -.0-~]", r"[^\x00-\x9f\u2028\u2029]", r"[^/\x00-\x1f\x7f-\x9f\u2028\u2029]"
_PART = rf"(?:{_ASCII}{{0,255}}|{_WIDE}{_ANY}{{0,62}}|{_ASCII}{{1,31}}{_WIDE}{_ANY}{{0,31}})"
NAME_PATTERN = rf"^(?:{_PART}/)*{_PART}(?![\s\S])"
_NAMED = Field(json_schema_extra={"pattern": NAME_PATTERN})  # documented; check_name is the check
FileName = Annotated[str, AfterValidator(check_name), _NAMED]

_PRESET_TAG, _CUSTOM_TAG = "preset", "custom"
UNION_TAGS = frozenset({_PRESET_TAG, _CUSTOM_TAG})


class LoraEntry(BaseModel):
    """One LoRA of a stack: a file in the LoRA folder, an https URL or hf://owner/repo/file[@rev]."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: Annotated[str, AfterValidator(_lora_path), _NAMED] = Field(min_length=1, max_length=2048)
    scale: float = Field(default=1.0, ge=-8, le=8, description="Strength on the diffusion model")
    text_encoder_scale: float | None = Field(default=None, ge=-8, le=8, description="Default: scale")
    expert: Literal["high", "low", "both"] = Field(default="both", description="Wan A14B: which expert")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Expected file hash")
    # fal's names on its Wan 2.2 LoRA endpoints, turned into darkroom's by the validator below.
    transformer: Literal["high", "low", "both"] | None = Field(
        default=None,
        exclude=True,
        description="fal's name for expert (Wan A14B): which expert takes the LoRA",
    )
    weight_name: str | None = Field(
        default=None,
        exclude=True,
        min_length=1,
        max_length=255,
        description="fal's: the file in a Hugging Face repository `path` (owner/repo): the same as "
        "path hf://owner/repo/<weight_name>",
    )

    @model_validator(mode="after")
    def _fal_names(self) -> LoraEntry:
        # These refusals are InputErrors (422 input_error, declared on the run and queue routes), not
        # validation errors: no JSON schema says that two fields must agree or what a path must be
        # when another field is given, so the document cannot, and the fuzz drill holds it to that.
        if self.transformer is not None:
            if "expert" in self.model_fields_set and self.expert != self.transformer:
                raise InputError(
                    f"A LoRA's expert {self.expert!r} and transformer {self.transformer!r} disagree: "
                    "transformer is fal's name for expert; send one of them, or the same value in both."
                )
            self.expert = self.transformer
        if self.weight_name is not None:
            self.path = _lora_path(_repo_file(self.path, self.weight_name))
        return self


def _repo_file(path: str, weight_name: str) -> str:
    """fal's {path: owner/repo, weight_name: file} as darkroom's hf://owner/repo/file."""
    repo = path.removeprefix("hf://").removeprefix("https://huggingface.co/").strip("/")
    is_other_url = "://" in repo
    if is_other_url or repo.count("/") != 1 or ".." in weight_name.split("/"):
        raise InputError(
            f"A LoRA's weight_name names a file in a Hugging Face repository: path must be owner/repo "
            f"(or hf://owner/repo), got {path!r}"
        )
    return f"hf://{repo}/{weight_name.strip('/')}"


class BlendEntry(BaseModel):
    """One diffusion model of a blend: a manifest name or a file in the diffusion model folder."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: FileName = Field(min_length=1, max_length=512)
    weight: float = Field(ge=0, le=1000)


def request_model(name: str, params: dict[str, ParamSpec]) -> type[BaseModel]:
    """The pydantic model validating one endpoint's request body (unknown fields are ignored, as fal does)."""
    fields: dict[str, Any] = {}
    for field_name, spec in params.items():
        annotation, constraints = _annotation(f"{name}_{field_name}", spec)
        default = ... if spec.required else spec.default
        if spec.honoured is not None:
            # Only a value the request sends is checked: fal's default, left out, is not refused. The
            # document lists only the honoured values.
            annotation = Annotated[annotation, AfterValidator(_honoured(spec))]
            constraints = {**constraints, "json_schema_extra": _only_honoured(spec)}
        fields[field_name] = (
            annotation,
            Field(
                default=default,
                description=spec.description,
                validate_default=spec.honoured is None,
                **constraints,
            ),
        )
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="ignore", strict=True), **fields)
    return model


def _honoured(spec: ParamSpec) -> Any:
    allowed = spec.honoured or []

    def check(value: Any) -> Any:
        if value not in allowed:
            shown = " or ".join(repr(v) for v in allowed if v is not None)
            send = f"send {shown} or leave it out" if shown else "leave it out"
            raise ValueError(f"{value!r} is not served by darkroom ({spec.unhonoured}); {send}")
        return value

    return check


def _only_honoured(spec: ParamSpec) -> Callable[[dict[str, Any]], None]:
    """For the document: the honoured values as the enum, and fal's default left out when it is not one
    of them (left out, the field runs as the honoured value; sent, fal's default is refused)."""

    def document(schema: dict[str, Any]) -> None:
        schema["enum"] = spec.honoured
        if schema.get("default") not in (spec.honoured or []):
            schema.pop("default", None)

    return document


def _annotation(field_name: str, spec: ParamSpec) -> tuple[Any, dict[str, Any]]:
    bounds = {k: v for k, v in (("ge", spec.ge), ("le", spec.le)) if v is not None}
    lengths = {k: v for k, v in (("min_length", spec.min_length), ("max_length", spec.max_length)) if v}
    url = (InputUrl if spec.required else InputUrl | None, {"min_length": 1, "json_schema_extra": URI})
    simple: dict[str, tuple[Any, dict[str, Any]]] = {
        "string": (str, lengths),
        "integer": (JsonInt, {k: int(v) for k, v in bounds.items()}),
        "number": (float, bounds),
        "boolean": (bool, {}),
        "seed": (json_int(ge=0, le=SEED_MAX) | None, {}),
        # any URI the client names (https, a data URI, one of our /files/ URLs); what it may reach is
        # the outbound policy's business (a refusal is a 422 address_not_allowed or input_error)
        "image_url": url,
        "video_url": url,
        "audio_url": url,
        "archive_url": (InputUrl, {"min_length": 1, "json_schema_extra": URI}),  # a trainer's zip
        "image_urls": (
            list[Annotated[InputUrl, Field(json_schema_extra=URI)]],
            {"min_length": 1, "max_length": spec.max_length or 1},
        ),
        "loras": (list[LoraEntry], {"max_length": spec.max_length or 8}),
        "sampler": (str, {"min_length": 1, "max_length": 64}),
        "scheduler": (str, {"min_length": 1, "max_length": 64}),
        "sigmas": (
            list[Annotated[float, Field(ge=0)]] | None,
            {"min_length": 2, "max_length": spec.max_length or 1000},
        ),
        "model_file": (FileName | None, {"min_length": 1, "max_length": 512}),
        "model_blend": (list[BlendEntry] | None, {"min_length": 1, "max_length": spec.max_length or 8}),
        "object": (dict[str, Any] | None, {}),
    }
    if spec.type in simple:
        return simple[spec.type]
    if spec.type == "enum":
        assert spec.values, f"enum parameter {field_name} needs values"
        return Literal[tuple(spec.values)], {}
    size = _image_size(field_name, spec)
    return (size | None if spec.size_from else size), {}


def _image_size(field_name: str, spec: ParamSpec) -> Any:
    """A preset name or {width, height}; the tag keeps 422 details to the branch the client meant."""
    # Types built at run time from the mapping file: mypy cannot follow them, pydantic can.
    side = Field(
        ge=int(spec.ge) if spec.ge is not None else None, le=int(spec.le) if spec.le is not None else None
    )
    size: Any = create_model(
        field_name,
        __config__=ConfigDict(extra="forbid", strict=True),
        width=(JsonInt, side),
        height=(JsonInt, side),
    )
    names = (*IMAGE_SIZE_PRESETS, *(spec.values or []))
    preset: Any = Annotated[Literal[names], Tag(_PRESET_TAG)]
    custom: Any = Annotated[size, Tag(_CUSTOM_TAG)]
    return Annotated[preset | custom, Discriminator(_image_size_kind)]


def _image_size_kind(value: Any) -> str:
    return _PRESET_TAG if isinstance(value, str) else _CUSTOM_TAG

"""Workflow mappings: how a fal-style request fills an exported ComfyUI API-format graph.

A mapping file (`workflows/*.yaml`) names one workflow, declares its request parameters once
(type, default, range, which node inputs they set) and lists the endpoints that serve it, each
with the model files it binds and any per-endpoint parameter overrides (the tiny demo twins run
the same graph with small sizes).
"""

from __future__ import annotations

import copy
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.engine.models import Manifest
from server.settings import PROJECT_ROOT
from server.workflows import acceleration
from server.workflows.request_schema import AUTO, DEFAULT, IMAGE_SIZE_PRESETS, ParamSpec, request_model
from server.workflows.safety import check_spec, checker_field, insert_checker

WORKFLOWS_DIR = PROJECT_ROOT / "workflows"
SHARED_BLOCKS = "shared/extensions.yaml"  # relative to a mapping's folder


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, str] = Field(description='"node_id.input" -> manifest model name')
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-field overrides")
    lookups: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-lookup overrides")
    fixed: dict[str, Any] = Field(default_factory=dict, description='"node_id.input" -> constant')
    without: list[str] = Field(
        default_factory=list,
        description="the mapping's params (and lookups) this endpoint does not have (fal's schema lacks "
        "them); their targets keep the graph's values or the endpoint's `fixed` ones",
    )
    removes: list[str] = Field(
        default_factory=list,
        description='"node_id" nodes and "node_id.input" links this endpoint drops from the graph: one graph '
        "serves several endpoints (text-to-video drops the image-to-video graph's start-image nodes)",
    )
    limits_note: str | None = Field(
        default=None,
        description="Why the bounds are what they are (the CPU demos'), added to a 422 past them",
    )
    run_timeout_s: float | None = Field(
        default=None, gt=0, description="Longest a run may take here, if shorter than DARKROOM_RUN_TIMEOUT_S"
    )


class LookupSpec(BaseModel):
    """A value picked by several enum fields together, e.g. (resolution, aspect_ratio) -> frame size."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str]
    table: dict[str, dict[str, Any]] = Field(description='"value1 value2" -> {part: value}')
    to: dict[str, list[str]]


class OutputSpec(BaseModel):
    """Which saved files become the response: `images[]` (image endpoints), `video` (video ones), one
    `image` (upscalers, as fal's esrgan answers) or a trained `lora` and its config (trainers: the LoRA
    under `lora_field`, fal's `diffusers_lora_file` or `lora_file`)."""

    model_config = ConfigDict(extra="forbid")
    images: str | None = None
    video: str | None = None
    image: str | None = None
    video_prompt: bool = Field(
        default=True,
        description="a video answer carries the prompt, as fal's Wan answers do (not its HunyuanVideo)",
    )
    lora: str | None = None
    lora_field: str = "diffusers_lora_file"

    @property
    def kind(self) -> str:
        return "images" if self.images else "video" if self.video else "lora" if self.lora else "image"

    @property
    def node(self) -> str:
        node = self.images or self.video or self.image or self.lora
        assert node is not None
        return node


class MappingFile(BaseModel):
    """One workflow and its endpoints. `extends` names a mapping whose params and lookups this one
    starts from (an image-to-video mapping extends its text-to-video sibling)."""

    model_config = ConfigDict(extra="forbid")
    extends: str | None = None
    workflow: str
    output: OutputSpec
    params: dict[str, ParamSpec]
    lookups: dict[str, LookupSpec] = Field(default_factory=dict)
    shared: dict[str, Any] = Field(
        default_factory=dict,
        description="YAML anchors that endpoints merge (`<<: *name`): what several endpoints have in common "
        "(a mode's removed nodes, a demo's bounds), written once; read only through those merges",
    )
    endpoints: dict[str, EndpointSpec]


class MappingError(ValueError):
    """A mapping file disagrees with its workflow or the manifest; raised at load, never per request."""


@dataclass(frozen=True)
class ImageInput:
    """An input image as the worker knows it: its name in the worker's input folder, and its size."""

    name: str
    width: int
    height: int


@dataclass(frozen=True)
class MediaInput:
    """A video or audio input as the worker knows it: its name in the worker's input folder, and what
    the facade's probe decoded (``server/media/av_inputs.py``; video fields 0 for audio and back)."""

    name: str
    duration_s: float
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    sample_rate: int = 0


@dataclass(frozen=True)
class Endpoint:
    """A servable app id: validates a request and turns it into a ComfyUI prompt."""

    app_id: str
    workflow: dict[str, Any]
    params: dict[str, ParamSpec]
    models: dict[str, str]
    fixed: dict[str, Any]
    lookups: dict[str, LookupSpec]
    output: OutputSpec
    request_model: type[BaseModel]
    # The request is a whole prompt to run as it is (the editor's runs), not fields of a mapping.
    raw: bool = False
    limits_note: str | None = None  # see EndpointSpec
    run_timeout_s: float | None = None  # see EndpointSpec
    removes: tuple[str, ...] = ()  # see EndpointSpec

    def validate(self, body: Any) -> BaseModel:
        """Parse a request body; raises pydantic's ValidationError with fal-style details."""
        return self.request_model.model_validate(body)

    def params_of(self, *types: str) -> list[str]:
        """Request fields of these types (image URLs and LoRAs need I/O before the graph can run)."""
        return [name for name, spec in self.params.items() if spec.type in types]

    @property
    def models_key(self) -> str:
        """The model key of a request that names no model files of its own (see ``model_key``)."""
        return "+".join(sorted(set(self.models.values())))

    def model_key(self, request: BaseModel) -> str:
        """What a worker holds loaded after this request: its manifest model names, sorted and joined
        with "+", then any model files or blend the request names. Endpoints over the same files share
        a key (text-to-image and edit), so either runs warm where the other ran; LoRAs are left out:
        they patch a loaded model without reloading it."""
        key = self.models_key
        chosen = request.model_dump(mode="json", include=set(self.params_of("model_file", "model_blend")))
        chosen = {name: value for name, value in chosen.items() if value is not None}
        return f"{key} {json.dumps(chosen, sort_keys=True)}" if chosen else key

    def build_prompt(
        self, request: BaseModel, manifest: Manifest, prepared: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The graph to submit and the resolved values (random seed filled in, image size in pixels).

        `prepared` holds what the facade fetched for I/O-backed fields: ImageInput per image field,
        MediaInput per video or audio field, the cache-resolved entry list per LoRA field.
        """
        prepared = prepared or {}
        prompt = copy.deepcopy(self.workflow)
        resolved: dict[str, Any] = {}
        for target, model_name in self.models.items():
            _set(prompt, target, manifest.get(model_name).folder_name)
        for target, value in self.fixed.items():
            _set(prompt, target, value)
        _remove(prompt, list(self.removes))
        for name, spec in self.params.items():
            value = resolved[name] = _resolve(name, spec, getattr(request, name), prepared, manifest)
            if value is False and spec.off_removes:
                _remove(prompt, spec.off_removes)
            if value is None:
                _remove(prompt, spec.absent_removes)
                continue  # an optional field left out: the workflow's own value stands
            if spec.cache:
                random_weights = all(manifest.get(m).source.generated for m in self.models.values())
                acceleration.add_step_cache(
                    prompt, list(spec.to), spec.cache, value, random_weights=random_weights
                )
            elif spec.type == "model_blend":
                (node_id,) = spec.to
                prompt[node_id] = _blend_node(prompt[node_id], value, spec)
            elif isinstance(spec.to, dict):
                _set_parts(prompt, spec.to, value)
            else:
                for target in spec.to:
                    _set(prompt, target, value)
        for name, lookup in self.lookups.items():
            resolved[name] = lookup.table[" ".join(str(resolved[key]) for key in lookup.keys)]
            _set_parts(prompt, lookup.to, resolved[name])
        checker = checker_field(self.params)
        if checker is not None and resolved[checker]:
            checker_file = manifest.get(self.params[checker].checker or "").folder_name
            insert_checker(prompt, self.output.node, checker_file, video=self.output.kind == "video")
        return prompt, resolved


def load_endpoints(directory: Path, manifest: Manifest) -> dict[str, Endpoint]:
    """Every endpoint declared by the mapping files in directory, checked against workflows and manifest."""
    endpoints: dict[str, Endpoint] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            mapping = MappingFile.model_validate(_with_base(path, yaml.safe_load(path.read_text())))
        except ValidationError as e:
            raise MappingError(f"{path}: {e}") from e
        workflow = json.loads((directory / mapping.workflow).read_text())
        for app_id, spec in mapping.endpoints.items():
            if app_id in endpoints:
                raise MappingError(f"{path}: endpoint {app_id} is declared twice")
            endpoints[app_id] = _endpoint(path, app_id, mapping, spec, workflow, manifest)
    return endpoints


def _with_shared(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Params written ``{shared: name, ...}`` start from that block of ``shared/extensions.yaml`` (the
    fields beyond fal's that every family declares alike); their own keys override the block's."""
    params = raw.get("params") or {}
    if not any(isinstance(p, dict) and "shared" in p for p in params.values()):
        return raw
    blocks = yaml.safe_load((path.parent / SHARED_BLOCKS).read_text())
    resolved = {}
    for name, param in params.items():
        if isinstance(param, dict) and "shared" in param:
            if param["shared"] not in blocks:
                raise MappingError(f"{path}: {name}: no shared block {param['shared']!r} in {SHARED_BLOCKS}")
            param = {**blocks[param["shared"]], **{k: v for k, v in param.items() if k != "shared"}}
        resolved[name] = param
    return {**raw, "params": resolved}


def _with_base(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A mapping that extends another starts from the other's params and lookups (one level). Top-level
    keys starting "x-" only hold YAML anchors that endpoints merge in (`<<: *name`); they are dropped."""
    raw = _with_shared(path, {key: value for key, value in raw.items() if not key.startswith("x-")})
    if not raw.get("extends"):
        return raw
    base = _with_shared(path, yaml.safe_load((path.parent / raw["extends"]).read_text()))
    if base.get("extends"):
        raise MappingError(f"{path}: extends {raw['extends']}, which itself extends another mapping")
    merged = dict(raw)
    for section in ("params", "lookups"):
        merged[section] = {**base.get(section, {}), **raw.get(section, {})}
    return merged


def _endpoint(
    path: Path,
    app_id: str,
    mapping: MappingFile,
    spec: EndpointSpec,
    workflow: dict[str, Any],
    manifest: Manifest,
) -> Endpoint:
    params = {}
    for name, base in mapping.params.items():
        if name not in spec.without:
            params[name] = _step_cache(path, app_id, name, base.model_copy(update=spec.params.get(name, {})))
    lookups = {
        name: base.model_copy(update=spec.lookups.get(name, {}))
        for name, base in mapping.lookups.items()
        if name not in spec.without
    }
    unknown = (set(spec.params) - set(params)) | (set(spec.lookups) - set(lookups))
    unknown |= set(spec.without) - set(mapping.params) - set(mapping.lookups)
    if unknown:
        raise MappingError(f"{path}: {app_id} overrides unknown params or lookups {sorted(unknown)}")
    blends = [p for p in params.values() if p.type == "model_blend"]
    for blend in (b for b in blends if b.honoured != [None]):  # [None]: declared only to be refused
        if len(blend.to) != 1 or list(blend.to)[0] not in workflow or not blend.family:
            raise MappingError(f"{path}: {app_id}: a model_blend names one loader node id and a family")
    targets = [t for p in params.values() if p not in blends for t in _targets(p.to)]
    targets += list(spec.models) + list(spec.fixed)
    targets += [t for lookup in lookups.values() for t in _targets(lookup.to)]
    removes = [t for p in params.values() for t in (*p.absent_removes, *p.off_removes)]
    targets += [t for t in removes if "." in t]
    if any(t not in workflow for t in removes if "." not in t):
        raise MappingError(
            f"{path}: {app_id}: absent_removes or off_removes names a node not in {mapping.workflow}"
        )
    _check_removes(path, app_id, spec.removes, targets, workflow)
    for target in targets:
        node_id, input_name = _parse_target(target)
        if input_name not in workflow.get(node_id, {}).get("inputs", {}):
            raise MappingError(
                f"{path}: {app_id} targets {target!r}, which is not an input of {mapping.workflow}"
            )
    for name, lookup in lookups.items():
        _check_lookup(path, f"{app_id}: {name}", lookup, params)
    for name, param in params.items():
        source = params.get(param.size_from or "")
        sized = param.type == "image_size" or (param.honoured is not None and isinstance(param.to, dict))
        if param.type == "image_size" and param.values and (not param.size_from or param.values != [AUTO]):
            raise MappingError(f"{path}: {app_id}: {name}'s one extra name is {AUTO!r}, with size_from")
        if param.size_from and (not sized or not source or source.type not in ("image_url", "image_urls")):
            raise MappingError(
                f"{path}: {app_id}: {name}'s size_from must name an image field, and {name} be an "
                "image_size or a field with one honoured value and width/height targets"
            )
    for model_name in spec.models.values():
        try:
            manifest.get(model_name)
        except KeyError as e:
            raise MappingError(f"{path}: {app_id}: {e.args[0]}") from e
    if (
        sum(node is not None for node in (mapping.output.images, mapping.output.video, mapping.output.image,
                                          mapping.output.lora))
        != 1
    ):  # fmt: skip
        raise MappingError(f"{path}: output names exactly one of images, video, image or lora")
    if mapping.output.node not in workflow:
        raise MappingError(f"{path}: output node {mapping.output.node} is not in {mapping.workflow}")
    output_class = workflow[mapping.output.node].get("class_type")
    for problem in filter(None, (check_spec(n, p, manifest, output_class) for n, p in params.items())):
        raise MappingError(f"{path}: {app_id}: {problem}")
    model_name = "Input_" + "".join(c if c.isalnum() else "_" for c in app_id)
    return Endpoint(
        app_id=app_id,
        workflow=workflow,
        params=params,
        models=dict(spec.models),
        fixed=dict(spec.fixed),
        lookups=lookups,
        output=mapping.output,
        request_model=request_model(model_name, params),
        limits_note=spec.limits_note,
        run_timeout_s=spec.run_timeout_s,
        removes=tuple(spec.removes),
    )


def _check_removes(
    path: Path, app_id: str, removes: list[str], targets: list[str], workflow: dict[str, Any]
) -> None:
    """Each removed node or link is in the graph, and nothing the endpoint sets lies in a removed node."""
    for target in removes:
        node_id, input_name = _parse_target(target)
        if node_id not in workflow or (input_name and input_name not in workflow[node_id]["inputs"]):
            raise MappingError(f"{path}: {app_id} removes {target!r}, which is not in the workflow")
    gone = {t for t in removes if "." not in t}
    clashes = sorted(t for t in targets if t in removes or _parse_target(t)[0] in gone)
    if clashes:
        raise MappingError(f"{path}: {app_id} sets {clashes}, which it removes")


def _step_cache(path: Path, app_id: str, name: str, param: ParamSpec) -> ParamSpec:
    """An acceleration field checked, and described from its levels unless the mapping describes it."""
    if not param.cache:
        return param
    # The levels served: fal's values, but those it refuses (`honoured`: LTX-2's "full" has no cache here)
    levels = [v for v in param.values or [] if param.honoured is None or v in param.honoured]
    if problem := acceleration.check(name, levels, param.to):
        raise MappingError(f"{path}: {app_id}: {problem}")
    if param.description:
        return param
    refused = [f"'{v}'" for v in param.values or [] if v not in levels]
    description = acceleration.describe(param.cache, levels)
    if refused:
        description += f" {' and '.join(refused)}: a 422 ({param.unhonoured})."
    return param.model_copy(update={"description": description})


def _targets(to: list[str] | dict[str, list[str]]) -> list[str]:
    return [t for ts in to.values() for t in ts] if isinstance(to, dict) else list(to)


def _check_lookup(path: Path, name: str, lookup: LookupSpec, params: dict[str, ParamSpec]) -> None:
    """Every combination of the key fields' values must have a row, so no request can miss."""
    choices: list[list[str]] = [[]]
    for key in lookup.keys:
        spec = params.get(key)
        if spec is None or spec.type != "enum" or not spec.values:
            raise MappingError(f"{path}: lookup {name} keys on {key!r}, which is not an enum parameter")
        values = [v for v in spec.values if not (v == AUTO and spec.auto_from)]
        choices = [c + [v] for c in choices for v in values]
    missing = [" ".join(c) for c in choices if " ".join(c) not in lookup.table]
    if missing:
        raise MappingError(f"{path}: lookup {name} has no row for {missing}")


def _resolve(name: str, spec: ParamSpec, value: Any, prepared: dict[str, Any], manifest: Manifest) -> Any:
    if spec.size_from and (value is None or value == AUTO or spec.type != "image_size"):
        # image_size left out or "auto", or a mode that means "the input's size" (its one honoured value)
        images = prepared[spec.size_from]
        first = images[0] if isinstance(images, list) else images
        return fitted_size(first.width, first.height, spec)
    if value is None and spec.type != "seed":
        return None
    if spec.type in ("sampler", "scheduler") and value == DEFAULT:
        return None  # the workflow's own choice
    if spec.type in ("image_url", "video_url", "audio_url"):
        return prepared[name].name
    if spec.type == "image_urls":
        return json.dumps([image.name for image in prepared[name]])
    if spec.type == "archive_url":
        return prepared[name]  # the unpacked set's folder in the worker's input folder
    if value == AUTO and spec.auto_from:
        image = prepared[spec.auto_from]
        return _nearest_ratio(image.width / image.height, [v for v in spec.values or [] if v != AUTO])
    if spec.type == "seed":
        return secrets.randbelow(2**32) if value is None else value
    if spec.type == "image_size":
        width, height = IMAGE_SIZE_PRESETS[value] if isinstance(value, str) else (value.width, value.height)
        step = spec.multiple_of or 1
        return {"width": max(step, width // step * step), "height": max(step, height // step * step)}
    if spec.type == "loras":
        return json.dumps(prepared.get(name, []))
    if spec.type == "sigmas":
        return json.dumps(value)
    if spec.type == "model_file":
        return _model_file(value, manifest)
    if spec.type == "model_blend":
        return [{"model": _model_file(entry.model, manifest), "weight": entry.weight} for entry in value]
    return value


def fitted_size(width: int, height: int, spec: ParamSpec) -> dict[str, int]:
    """An input image's size as an output size: scaled (aspect kept) only as far as needed to bring the
    longer side within ``le`` and the shorter up to ``ge``, sides rounded down to ``multiple_of``."""
    step = spec.multiple_of or 1
    factor = 1.0
    if spec.le is not None and max(width, height) > spec.le:
        factor = spec.le / max(width, height)
    elif spec.ge is not None and min(width, height) < spec.ge:
        factor = min(spec.ge / min(width, height), (spec.le or math.inf) / max(width, height))
    low, high = int(spec.ge or step), int(spec.le or 2**31)
    return {
        side: min(high, max(low, max(step, int(length * factor) // step * step)))
        for side, length in (("width", width), ("height", height))
    }


def _model_file(name: str, manifest: Manifest) -> str:
    """A manifest name becomes its file's name in its folder; anything else is taken as that name."""
    return manifest.models[name].folder_name if name in manifest.models else name


def _blend_node(loader: dict[str, Any], models: list[dict[str, Any]], spec: ParamSpec) -> dict[str, Any]:
    """The loader node swapped for a blend of the given models: same output, so no rewiring."""
    return {
        "class_type": "DarkroomModelBlend",
        "inputs": {
            "models": json.dumps(models),
            "family": spec.family,
            "weight_dtype": loader["inputs"].get("weight_dtype", "default"),
            "like": loader["inputs"].get("model_name", ""),  # the blend must fit the graph's model
        },
        "_meta": {"title": "Blend diffusion models"},
    }


def _parse_target(target: str) -> tuple[str, str]:
    """ "node.input" -> (node, input)."""
    node_id, _, input_name = target.strip().partition(".")
    return node_id, input_name


def _nearest_ratio(ratio: float, choices: list[str]) -> str:
    """The "W:H" choice closest to ratio, compared on a log scale so 2:1 and 1:2 are equally far from 1:1."""

    def distance(choice: str) -> float:
        width, height = (float(part) for part in choice.split(":"))
        return abs(math.log(ratio) - math.log(width / height))

    return min(choices, key=distance)


def _set(prompt: dict[str, Any], target: str, value: Any) -> None:
    node_id, input_name = _parse_target(target)
    prompt[node_id]["inputs"][input_name] = value


def _remove(prompt: dict[str, Any], targets: list[str]) -> None:
    for target in targets:
        node_id, input_name = _parse_target(target)
        if input_name:
            del prompt[node_id]["inputs"][input_name]
        else:
            del prompt[node_id]


def _set_parts(prompt: dict[str, Any], to: dict[str, list[str]], value: dict[str, Any]) -> None:
    for part, targets in to.items():
        for target in targets:
            _set(prompt, target, value[part])

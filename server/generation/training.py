"""What a LoRA trainer's request adds to a run: its zip fetched, checked and unpacked before any worker is
taken (``server/media/training_zip.py``: a bad archive is a 422 that costs no GPU time), the set uploaded
into the worker's input folder, the run's settings for the config file, and fal's trainer response.

The trained LoRA is kept in the LoRA folder under the URL it is answered with (``LoraCache.adopt``), so
the matching ``/lora`` endpoint takes that URL in ``loras[].path`` and loads it without a download.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from server.engine import client as cc
from server.errors import InputError
from server.media import inputs, training_zip
from server.media.objects import ObjectStore
from server.security import netpolicy
from server.settings import Settings
from server.workflows.mapping import Endpoint

LIMITS = training_zip.ZipLimits()
# The field that captions images without a .txt caption, as each fal trainer names it
DEFAULT_CAPTIONS = ("default_caption", "trigger_word", "trigger_phrase")
TRAIN_NODE = "DarkroomTrainLora"


async def unpack_sets(
    settings: Settings,
    objects: ObjectStore | None,
    endpoint: Endpoint,
    request: BaseModel,
    area: Path,
    base_url: str,
) -> dict[str, list[training_zip.TrainingImage]]:
    """Each archive field's images, unpacked under ``area``; images without a caption get the request's
    ``default_caption`` (``trigger_word``, ``trigger_phrase``: fal's other names for it)."""
    names = endpoint.params_of("archive_url")
    if not names:
        return {}
    sets = {}
    policy = netpolicy.AddressPolicy.from_settings(settings)
    async with netpolicy.guarded_session(policy) as session:
        for name in names:
            try:
                found = await inputs.fetch_input(
                    getattr(request, name), settings=settings, session=session, dest_dir=area / name,
                    own_base_url=base_url, objects=objects, max_bytes=LIMITS.max_total_bytes,
                )  # fmt: skip
            except InputError as e:
                raise type(e)(f"{name}: {e.message}", status=e.status, code=e.code, headers=e.headers) from e
            images = await asyncio.to_thread(training_zip.unpack, found.path, area / f"{name}-set", LIMITS)
            default = next((str(v) for f in DEFAULT_CAPTIONS if (v := getattr(request, f, None))), "")
            sets[name] = [_with_default(image, default) for image in images]
    return sets


def _with_default(image: training_zip.TrainingImage, default: str) -> training_zip.TrainingImage:
    if image.caption or not default:
        return image
    image.path.with_suffix(training_zip.CAPTION_SUFFIX).write_text(default, encoding="utf-8")
    return training_zip.TrainingImage(image.path, default, image.source, image.width, image.height)


async def upload_sets(
    client: cc.ComfyClient,
    sets: dict[str, list[training_zip.TrainingImage]],
    request_id: str,
    prepared: dict[str, Any],
) -> list[str]:
    """Put each set (images and captions) in a folder of the worker's input folder, named in ``prepared``
    for the graph; returns the uploaded files' names (for the worker to discard after the run)."""
    uploaded: list[str] = []
    for name, images in sets.items():
        folder = f"darkroom/train-{request_id}-{name}"
        for image in images:
            for path in (image.path, image.path.with_suffix(training_zip.CAPTION_SUFFIX)):
                uploaded.append(await client.upload_input(path.read_bytes(), path.name, subfolder=folder))
        prepared[name] = folder
    return uploaded


def add_settings(
    prompt: dict[str, Any], endpoint: Endpoint, resolved: dict[str, Any], *, device_memory_gb: float = 0.0
) -> None:
    """The run's settings (the request's fields, archive URLs left out: a data: URI can be megabytes)
    into the save node, which writes them into the config file with the loss curve; and the device memory
    the trainers may plan for (``train_device_memory_gb``; 0: the device's total)."""
    archives = set(endpoint.params_of("archive_url"))
    settings = {k: v for k, v in resolved.items() if k not in archives}
    prompt[endpoint.output.node]["inputs"]["settings"] = json.dumps({"endpoint": endpoint.app_id, **settings})
    for node in prompt.values():
        if node.get("class_type") == TRAIN_NODE:
            node["inputs"]["memory_limit_gb"] = device_memory_gb


def response(endpoint: Endpoint, files: list[dict[str, Any]]) -> dict[str, Any]:
    """fal's trainer output: the LoRA File under the endpoint's field and the config File (the save node
    reports the LoRA first)."""
    return {endpoint.output.lora_field: files[0], "config_file": files[1]}

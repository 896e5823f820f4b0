"""Run one validated request on a worker and shape the result the way fal's image endpoints do."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import PIL.Image
from pydantic import BaseModel

from server.engine import client as cc
from server.engine.models import Manifest
from server.engine.pack_check import PackReport, missing_packs, needed_packs
from server.engine.supervisor import Supervisor
from server.engine.worker import Worker
from server.errors import (
    ComfyValidationError,
    GenerationError,
    InputError,
    ModelsMissingError,
    NodePacksMissingError,
    RunTimeoutError,
    WorkerConnectionError,
    public_message,
)
from server.generation import training
from server.media import av_inputs, inputs
from server.media.loras import LoraCache
from server.media.outputs import OutputStore, data_uri
from server.media.training_zip import TrainingImage
from server.security import netpolicy
from server.settings import Settings
from server.workflows.choices import ComfyChoices
from server.workflows.editor import EDITOR_WORKER, EditorRun
from server.workflows.mapping import Endpoint, ImageInput, MediaInput
from server.workflows.safety import Verdicts, checker_field, verdicts

log = logging.getLogger(__name__)

EventSink = Callable[[cc.Event], Awaitable[None]]
# A request whose worker dies under it (crash, OOM kill) runs once more on the restarted or another
# worker; nothing was stored yet, so a re-run is safe. Bounded, so a request that kills its worker
# every time cannot take the pool down for long.
WORKER_ATTEMPTS = 2
PLACED_KEPT = 4096  # the most requests ``Generator.placed`` remembers
HISTORY_POLL_S = 0.1  # how often an editor run's worker is asked whether it finished
# Nodes whose failures come from what the request asked for (a LoRA of another family, a VAE that
# does not fit, an impossible blend or schedule): a 422 for the client, not a server error.
USER_INPUT_NODES = frozenset({
    "DarkroomLoraStack", "DarkroomVAEGuard", "DarkroomModelBlend", "DarkroomSigmas",
    "DarkroomKSamplerSigmas", "DarkroomVAELoader", "LoadImage", "DarkroomReferenceImages",
    "DarkroomUpscale", "DarkroomTrainLora", "DarkroomTrainingSet",
})  # fmt: skip


@dataclass
class ModelCalls:
    """A run's sampler model calls, summed over its sampling runs (``cc.Evaluations``): those that
    evaluated the diffusion model and those a step cache (``acceleration``) answered instead. No
    sampling run counted (``runs`` 0): a model darkroom's loaders did not load, or a sampler the worker
    answered from its cache of the same graph; then nothing is claimed."""

    evaluated: int = 0
    reused: int = 0
    runs: int = 0

    def add(self, event: cc.Evaluations) -> None:
        self.evaluated += event.evaluated
        self.reused += event.reused
        self.runs += 1

    def timings(self) -> dict[str, int]:
        """The counts for fal's timings, or nothing when no sampling run was counted."""
        if not self.runs:
            return {}
        return {"model_evaluations": self.evaluated, "model_evaluations_reused": self.reused}


@dataclass(frozen=True)
class Generator:
    """Everything a request needs to run: settings, workers, manifest and the output store."""

    settings: Settings
    supervisor: Supervisor
    manifest: Manifest
    store: OutputStore
    loras: LoraCache
    choices: ComfyChoices = field(default_factory=ComfyChoices)
    # The endpoint each worker ran last (its models are the ones ComfyUI keeps loaded), for the dashboard.
    last_run: dict[int, str] = field(default_factory=dict)
    # The last verification of this host's node packs (server/engine/pack_watch.py).
    node_packs: Callable[[], PackReport] = PackReport
    # Which worker ran each recent request (id, device kind, device name), until metering takes it.
    placed: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    def placement(self, request_id: str) -> tuple[int, str, str] | None:
        """Which worker ran the request (the last one, if it ran again after losing one), once."""
        return self.placed.pop(request_id, None)

    def has_models(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's model files are all here."""
        return not self.manifest.missing(endpoint.models.values(), self.settings.models_path)

    def has_packs(self, endpoint: Endpoint) -> bool:
        """Whether every node pack a published endpoint recorded is verified here."""
        return not missing_packs(self.node_packs(), needed_packs(endpoint.workflow))

    def check_models(self, endpoint: Endpoint) -> None:
        """Refuse an endpoint whose weights are absent, naming each file and the command that provides it."""
        detail = self.manifest.missing_detail(
            endpoint.app_id, endpoint.models.values(), self.settings.models_path
        )
        if detail:
            raise ModelsMissingError(detail)
        missing = missing_packs(self.node_packs(), needed_packs(endpoint.workflow))
        if missing:
            raise NodePacksMissingError(
                f"{endpoint.app_id} cannot run on this host: {'; '.join(missing)}. "
                "`darkroom nodes list` on the host shows each pack's state."
            )

    async def run(
        self,
        endpoint: Endpoint,
        request: BaseModel,
        *,
        request_id: str,
        base_url: str,
        on_event: EventSink | None = None,
    ) -> dict[str, Any]:
        """Generate, store the outputs and return fal's response body."""
        if endpoint.raw:
            return await self._run_raw(endpoint, request, request_id, on_event)
        self.check_models(endpoint)
        with inputs.input_area(self.settings, request_id) as area:
            return await self._run_fetched(endpoint, request, request_id, base_url, area, on_event)

    async def _run_fetched(
        self,
        endpoint: Endpoint,
        request: BaseModel,
        request_id: str,
        base_url: str,
        area: Path,
        on_event: EventSink | None,
    ) -> dict[str, Any]:
        images = await self._fetch_images(endpoint, request, request_id, base_url)
        media = await self._fetch_media(endpoint, request, request_id, base_url)
        sets = await training.unpack_sets(
            self.settings, self.store.objects, endpoint, request, area, base_url
        )
        prepared: dict[str, Any] = {
            name: await self.loras.resolve([entry.model_dump() for entry in getattr(request, name)])
            for name in endpoint.params_of("loras")
        }
        for attempt in range(1, WORKER_ATTEMPTS + 1):
            try:
                files, resolved, inference_s, checked, calls = await self._run_on_worker(
                    endpoint, request, request_id, base_url, (images, media, sets), prepared, on_event
                )
                break
            except WorkerConnectionError as e:
                if attempt == WORKER_ATTEMPTS:
                    raise WorkerConnectionError(
                        f"{e.message} (after {attempt} attempts: the request lost its worker each time)"
                    ) from e
                log.warning("%s %s lost its worker (%s): running it again", endpoint.app_id, request_id, e)
                if on_event is not None:
                    await on_event(cc.WorkerLost(request_id, e.message))
        log.info("%s %s: %d file(s) in %.3f s", endpoint.app_id, request_id, len(files), inference_s)
        if endpoint.output.kind == "images" or checker_field(endpoint.params):
            await _report_safety(endpoint, request_id, checked, on_event)
        return _response(endpoint, files, resolved, inference_s, checked, calls)

    async def _run_on_worker(
        self,
        endpoint: Endpoint,
        request: BaseModel,
        request_id: str,
        base_url: str,
        fetched: tuple[
            dict[str, list[tuple[bytes, int, int]]],
            dict[str, tuple[bytes, str, MediaInput]],
            dict[str, list[TrainingImage]],
        ],
        prepared: dict[str, Any],
        on_event: EventSink | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any], float, Verdicts, ModelCalls]:
        """Borrow a worker, run the prompt there and store its outputs: (files, resolved values, seconds,
        the safety checker's verdicts, model calls). ``fetched``: the input images, other media and
        training sets, fetched before a worker was taken."""
        images, media, sets = fetched
        async with self.supervisor.worker(model_key=endpoint.model_key(request)) as worker:
            self.last_run[worker.id] = endpoint.app_id
            self.placed[request_id] = (worker.id, worker.device_kind, worker.device_name)
            while len(self.placed) > PLACED_KEPT:  # a bound, should a request never be metered
                del self.placed[next(iter(self.placed))]
            await self.choices.check(endpoint, request, worker.client)
            uploaded: list[str] = []
            try:
                uploaded += await training.upload_sets(worker.client, sets, request_id, prepared)
                for name, field_images in images.items():
                    described = []
                    for index, (data, width, height) in enumerate(field_images):
                        uploaded.append(
                            await worker.client.upload_input(data, f"{request_id}-{name}-{index}")
                        )
                        described.append(ImageInput(uploaded[-1], width, height))
                    is_list = endpoint.params[name].type == "image_urls"
                    prepared[name] = described if is_list else described[0]
                for name, (data, suffix, probed) in media.items():
                    uploaded.append(await worker.client.upload_input(data, f"{request_id}-{name}{suffix}"))
                    prepared[name] = dataclasses.replace(probed, name=uploaded[-1])
                prompt, resolved = endpoint.build_prompt(request, self.manifest, prepared)
                if endpoint.output.kind == "lora":
                    training.add_settings(
                        prompt, endpoint, resolved, device_memory_gb=self.settings.train_device_memory_gb
                    )
                started = time.perf_counter()
                async with self._run_limit(endpoint, request_id):
                    saved, calls = await self._execute(worker.client, prompt, endpoint, request_id, on_event)
                files = await self._store_all(worker, saved, request_id, resolved, base_url)
            finally:
                worker.discard("input", uploaded)
            checked = verdicts(endpoint.params, resolved, saved)
            return files, resolved, time.perf_counter() - started, checked, calls

    async def _store_all(
        self,
        worker: Worker,
        saved: list[dict[str, Any]],
        request_id: str,
        resolved: dict[str, Any],
        base_url: str,
    ) -> list[dict[str, Any]]:
        """Store every output (all or none: a request never shows half its files); the worker keeps only
        the last run's copies, so its output folder does not grow with every run."""
        try:
            return [
                await self._store(worker.client, entry, request_id, index, resolved, base_url)
                for index, entry in enumerate(saved)
            ]
        except BaseException:
            await asyncio.to_thread(self.store.delete, [request_id])
            raise
        finally:
            worker.keep_outputs(_output_path(e) for e in saved if e.get("type", "output") == "output")

    async def _run_raw(
        self, endpoint: Endpoint, request: BaseModel, request_id: str, on_event: EventSink | None
    ) -> dict[str, Any]:
        """An editor run: its prompt as it is, on the editor's worker, under the editor's client id (so
        the editor gets the events); finished when the worker's history has it. Answers ComfyUI's outputs."""
        assert isinstance(request, EditorRun), f"{endpoint.app_id} takes an EditorRun, got {type(request)}"
        run = request
        async with self.supervisor.worker(worker_id=EDITOR_WORKER) as worker:
            self.last_run[worker.id] = endpoint.app_id
            try:
                await worker.client.submit(
                    run.prompt, prompt_id=request_id, client_id=run.client_id, extra_data=run.extra_data
                )
            except ComfyValidationError as e:
                raise InputError(f"{endpoint.app_id}: {public_message(e.message)}") from e
            if on_event is not None:
                await on_event(cc.Started(request_id))
            started = time.perf_counter()
            try:
                async with self._run_limit(endpoint, request_id):
                    entry = await _finished(worker.client, request_id)
            except (asyncio.CancelledError, RunTimeoutError):
                await worker.client.cancel(request_id)  # cancelled here: stop it on the worker too
                raise
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            raise GenerationError(f"{endpoint.app_id}: {public_message(_history_error(status))}")
        return {
            "prompt_id": request_id,
            "outputs": entry.get("outputs", {}),
            "timings": {"inference": time.perf_counter() - started},
        }

    @contextlib.asynccontextmanager
    async def _run_limit(self, endpoint: Endpoint, request_id: str) -> AsyncIterator[None]:
        """At most the run limit (the endpoint's if shorter than DARKROOM_RUN_TIMEOUT_S): past it the run
        is cancelled, which interrupts it on the worker, and fails with RunTimeoutError (504)."""
        longest_s = (
            self.settings.train_timeout_s if endpoint.output.kind == "lora" else self.settings.run_timeout_s
        )
        limit_s = min(endpoint.run_timeout_s or math.inf, longest_s)
        limit = asyncio.timeout(limit_s)
        try:
            async with limit:
                yield
        except TimeoutError:
            if not limit.expired():
                raise  # a timeout of its own (the worker's connection), not the run limit
            raise RunTimeoutError(
                f"{endpoint.app_id}: request {request_id} ran past its run limit of {limit_s:g} s and "
                "was interrupted (DARKROOM_RUN_TIMEOUT_S, DARKROOM_TRAIN_TIMEOUT_S for trainers, or the "
                "endpoint's run_timeout_s)"
            ) from None

    async def _fetch_images(
        self, endpoint: Endpoint, request: BaseModel, request_id: str, base_url: str
    ) -> dict[str, list[tuple[bytes, int, int]]]:
        """Download each input image before taking a worker, so no worker waits on the network:
        (bytes, width, height) per image, a list per field (image_url fields: one)."""
        fetched: dict[str, list[tuple[bytes, int, int]]] = {}
        urls: dict[str, list[str]] = {
            name: [value] if isinstance(value, str) else list(value)
            for name in endpoint.params_of("image_url", "image_urls")
            if (value := getattr(request, name))
        }
        if not urls:
            return fetched
        policy = netpolicy.AddressPolicy.from_settings(self.settings)
        with inputs.input_area(self.settings, request_id) as folder:
            async with netpolicy.guarded_session(policy) as session:
                for name, field_urls in urls.items():
                    fetched[name] = []
                    for index, url in enumerate(field_urls):
                        label = name if endpoint.params[name].type == "image_url" else f"{name}[{index}]"
                        fetched[name].append(await self._fetch_image(url, label, folder, session, base_url))
        return fetched

    async def _fetch_media(
        self, endpoint: Endpoint, request: BaseModel, request_id: str, base_url: str
    ) -> dict[str, tuple[bytes, str, MediaInput]]:
        """Fetch and probe each video and audio input before taking a worker (``av_inputs``): its bytes,
        file suffix and what the probe found, per field. A refusal is a 422 naming the field."""
        fields = {name: getattr(request, name) for name in endpoint.params_of("video_url", "audio_url")}
        fetched: dict[str, tuple[bytes, str, MediaInput]] = {}
        if not any(fields.values()):
            return fetched
        policy = netpolicy.AddressPolicy.from_settings(self.settings)
        with inputs.input_area(self.settings, request_id) as folder:
            async with netpolicy.guarded_session(policy) as session:
                for name, url in fields.items():
                    if not url:
                        continue
                    kind: av_inputs.MediaKind = (
                        "video" if endpoint.params[name].type == "video_url" else "audio"
                    )
                    found = await av_inputs.fetch_media(
                        url, name, kind, settings=self.settings, session=session, dest_dir=folder,
                        own_base_url=base_url, objects=self.store.objects,
                    )  # fmt: skip
                    info = found.info
                    probed = MediaInput(
                        "", info.duration_s, info.frames, info.fps, info.width, info.height, info.sample_rate
                    )
                    fetched[name] = (found.path.read_bytes(), found.path.suffix, probed)
        return fetched

    async def _fetch_image(
        self, url: str, field: str, folder: Path, session: aiohttp.ClientSession, base_url: str
    ) -> tuple[bytes, int, int]:
        """One input image, checked to be an image of at most DARKROOM_INPUT_MAX_PIXELS; a 422 names
        the field."""
        try:
            found = await inputs.fetch_input(
                url,
                settings=self.settings,
                session=session,
                dest_dir=folder,
                own_base_url=base_url,
                objects=self.store.objects,
                accept=("image/",),
            )
        except InputError as e:
            raise type(e)(f"{field}: {e.message}", status=e.status, code=e.code, headers=e.headers) from e
        data = found.path.read_bytes()
        return (data, *await asyncio.to_thread(_image_size, data, field, self.settings.input_max_pixels))

    async def _execute(
        self,
        client: cc.ComfyClient,
        prompt: dict[str, Any],
        endpoint: Endpoint,
        request_id: str,
        on_event: EventSink | None,
    ) -> tuple[list[dict[str, Any]], ModelCalls]:
        saved: list[dict[str, Any]] = []
        calls = ModelCalls()
        try:
            async for event in client.run(prompt, prompt_id=request_id):
                if isinstance(event, cc.Evaluations):
                    calls.add(event)
                await self._on(event, endpoint, request_id, saved, on_event)
        except ComfyValidationError as e:
            if e.class_type not in USER_INPUT_NODES:
                raise
            # ComfyUI repeats a node's message once per input it checked ("<input> - <message>"):
            # say it once.
            reasons = dict.fromkeys(
                (error.details or error.message).removeprefix(f"{error.input_name} - ")
                for error in e.node_errors
            )
            raise InputError(f"{endpoint.app_id}: {public_message('; '.join(reasons))}") from e
        if not saved:
            raise GenerationError(f"{endpoint.app_id}: the workflow produced no {endpoint.output.kind}")
        return saved, calls

    async def _on(
        self,
        event: cc.Event,
        endpoint: Endpoint,
        request_id: str,
        saved: list[dict[str, Any]],
        on_event: EventSink | None,
    ) -> None:
        """Handle one worker event: forward it, collect saved files, turn failures into errors."""
        if on_event is not None:
            await on_event(event)
        if isinstance(event, cc.Executed) and event.node == endpoint.output.node:
            saved.extend(event.output.get("images", []))
        elif isinstance(event, cc.ExecutionError) and event.node_type in USER_INPUT_NODES:
            raise InputError(f"{endpoint.app_id}: {public_message(event.message)}")
        elif isinstance(event, cc.ExecutionError):
            failed = f"node {event.node_id} ({event.node_type}) failed"
            raise GenerationError(f"{endpoint.app_id}: {failed}: {public_message(event.message)}")
        elif isinstance(event, cc.Interrupted):
            raise GenerationError(f"{endpoint.app_id}: request {request_id} was interrupted")

    async def _store(
        self,
        client: cc.ComfyClient,
        entry: dict[str, Any],
        request_id: str,
        index: int,
        resolved: dict[str, Any],
        base_url: str,
    ) -> dict[str, Any]:
        data = await client.fetch_output(
            entry["filename"], entry.get("subfolder", ""), entry.get("type", "output")
        )
        content_type = entry.get("content_type", "image/png")
        name = f"{index}.{entry['filename'].rsplit('.', 1)[-1]}"
        if resolved.get("sync_mode"):
            url = data_uri(data, content_type)  # kept out of the store, as fal keeps it out of history
        else:
            files_base = self.settings.files_url.rstrip("/") or base_url
            url = files_base + (await self.store.write(request_id, name, data, content_type)).route
            if entry.get("role") == "lora":
                await asyncio.to_thread(self.loras.adopt, url, data, request_id)
        described = {"url": url, "content_type": content_type, "file_name": name, "file_size": len(data)}
        if "width" in entry:
            described.update(width=entry["width"], height=entry["height"])
        if entry.get("frames") and entry.get("fps"):  # a video: what the worker wrote (fal's VideoFile)
            frames, fps = int(entry["frames"]), float(entry["fps"])
            described.update(fps=fps, num_frames=frames, duration=frames / fps)
        return described


def _output_path(entry: Mapping[str, Any]) -> str:
    return f"{entry['subfolder']}/{entry['filename']}" if entry.get("subfolder") else str(entry["filename"])


async def _finished(client: cc.ComfyClient, prompt_id: str) -> dict[str, Any]:
    """The prompt's history entry once it has one; WorkerConnectionError if the worker lost it."""
    while True:
        entry = await client.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry
        running, pending = await client.queue()
        if prompt_id not in running and prompt_id not in pending:
            entry = await client.history(prompt_id)  # it may have finished between the two calls
            if entry is not None:
                return entry
            raise WorkerConnectionError(
                f"{client.base_url} lost prompt {prompt_id}: neither queued nor in history"
            )
        await asyncio.sleep(HISTORY_POLL_S)


def _history_error(status: Mapping[str, Any]) -> str:
    """The error a failed prompt's history status carries (execution_error or interrupted)."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            node = f"node {data.get('node_id')} ({data.get('node_type')})"
            return f"{node} failed: {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "the run was interrupted"
    return "the run failed"


def _image_size(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """Width and height, at most ``max_pixels`` in all (checked from the header first: a small file may
    claim billions of pixels, a decompression bomb), then every pixel decoded: a truncated or corrupt
    image is refused here, before any worker spends time on it."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height <= max_pixels:
                image.load()
    except PIL.Image.DecompressionBombError as e:
        raise InputError(
            f"{field}: too many pixels ({e}); at most {max_pixels} (DARKROOM_INPUT_MAX_PIXELS)"
        ) from e
    except PIL.UnidentifiedImageError as e:
        raise InputError(f"{field}: not an image Pillow can read ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow's decoders raise for cut or corrupt data
        raise InputError(f"{field}: not a complete image: decoding it failed ({e})") from e
    if width * height > max_pixels:
        raise InputError(
            f"{field}: {width} x {height} is {width * height} pixels, more than the {max_pixels} allowed "
            "(DARKROOM_INPUT_MAX_PIXELS)"
        )
    return width, height


async def _report_safety(
    endpoint: Endpoint, request_id: str, checked: Verdicts, on_event: EventSink | None
) -> None:
    """Say in the log and the request's status logs what the safety checker did, above all when it did
    not run (has_nsfw_concepts null), so an unchecked image is never taken for a checked one."""
    noun = "video(s)" if endpoint.output.kind == "video" else "image(s)"
    if checked.note is None:
        message = f"Safety checker: {checked.flagged} of {len(checked.flags)} {noun} flagged"
        message += " and replaced by black" if checked.flagged else ""
    else:
        message = f"Safety checker: not checked ({checked.note}); has_nsfw_concepts is null"
    level = logging.WARNING if checked.failed else logging.INFO
    log.log(level, "%s %s: %s", endpoint.app_id, request_id, message)
    if on_event is not None:
        await on_event(cc.Note(request_id, message, "WARN" if checked.failed else "INFO"))


def _response(
    endpoint: Endpoint,
    files: list[dict[str, Any]],
    resolved: dict[str, Any],
    inference_s: float,
    checked: Verdicts,
    calls: ModelCalls,
) -> dict[str, Any]:
    """fal's output shape: image models answer images[] and friends, video models one File, upscalers
    one image. fal's image timings are a record of numbers: the model calls go there too (fal's video
    and upscaler outputs have no timings; the request's logs say them)."""
    seed = next((resolved[name] for name in endpoint.params_of("seed")), None)
    field = checker_field(endpoint.params)
    # Beyond fal's video and one-image schemas, and only when asked for: what the output checker found.
    verdicts = {"has_nsfw_concepts": checked.flags} if field and resolved.get(field) else {}
    if endpoint.output.kind == "video":
        video = {"video": files[0], "seed": seed}
        if endpoint.output.video_prompt:
            video["prompt"] = resolved.get("prompt", "")
        return {**video, **verdicts}
    if endpoint.output.kind == "image":  # an upscaler's {image}; a generator's {image, seed} (Wan's)
        return {"image": files[0], **({"seed": seed} if seed is not None else {}), **verdicts}
    if endpoint.output.kind == "lora":
        return training.response(endpoint, files)
    return {
        "images": files,
        "seed": seed,
        "timings": {"inference": inference_s, **calls.timings()},
        "prompt": resolved.get("prompt", ""),
        "has_nsfw_concepts": checked.flags,
    }

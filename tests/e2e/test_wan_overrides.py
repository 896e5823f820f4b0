"""Wan endpoints through the API on the real stack: requests without the beyond-fal schedule, VAE and
blend fields give the bytes of the original KSampler graphs, run beside them on the same worker; the
new fields change the video."""

from __future__ import annotations

import base64
import copy
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file

from server.engine import events as cc
from server.engine.client import ComfyClient
from server.engine.supervisor import Supervisor
from server.workflows.mapping import Endpoint

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

T2V_5B, I2V_5B = "darkroom/demo-wan-2.2-5b-t2v", "darkroom/demo-wan-2.2-5b-i2v"
T2V_A14B, I2V_A14B = "darkroom/demo-wan-2.2-a14b-t2v", "darkroom/demo-wan-2.2-a14b-i2v"


def png_data_uri(width: int, height: int, color: tuple[int, int, int]) -> str:
    image = Image.new("RGB", (width, height), color)
    image.paste((20, 20, 220), (width // 4, height // 4, width // 2, height // 2))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


START, END = png_data_uri(60, 100, (200, 40, 40)), png_data_uri(100, 60, (30, 200, 60))


async def video(facade: TestClient, app_id: str, expect: int = 200, **body: Any) -> bytes | str:
    """The mp4's bytes, or the error detail when `expect` is not 200."""
    if app_id in (I2V_5B, I2V_A14B):
        body.setdefault("image_url", START)
    response = await facade.post(f"/run/{app_id}", json={"prompt": "a red fox", "seed": 3, **body})
    assert response.status == expect, await response.text()
    if expect != 200:
        return str((await response.json())["detail"])
    url = (await response.json())["video"]["url"]
    return await (await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])).read()


def ksampler_graph(prompt: dict[str, Any]) -> dict[str, Any]:
    """A built request's graph as it was before the rewrite: KSampler (5B) or the KSamplerAdvanced pair
    (A14B, `handover` splitting the steps as KSamplerAdvanced's start/end steps) in place of each
    SamplerCustom on DarkroomKSamplerSigmas."""
    graph = copy.deepcopy(prompt)
    for node_id, node in prompt.items():
        if node["class_type"] != "SamplerCustom":
            continue
        run = node["inputs"]
        schedule_id, part = run["sigmas"]
        schedule = prompt[schedule_id]["inputs"]
        common = {key: run[key] for key in ("model", "cfg", "positive", "negative", "latent_image")}
        common |= {key: schedule[key] for key in ("steps", "sampler_name", "scheduler")}
        if schedule["handover"] == 0:
            inputs = {**common, "seed": run["noise_seed"], "denoise": schedule["denoise"]}
            graph[node_id] = {"class_type": "KSampler", "inputs": inputs}
            continue
        assert schedule["denoise"] == 1 and not schedule["custom_sigmas"], "the old pair had neither"
        half, high = int(schedule["steps"] * schedule["handover"]), part == 1
        inputs = {
            **common,
            "noise_seed": run["noise_seed"],
            "add_noise": "enable" if run["add_noise"] else "disable",
            "start_at_step": 0 if high else half,
            "end_at_step": half if high else 10000,
            "return_with_leftover_noise": "enable" if high else "disable",
        }
        graph[node_id] = {"class_type": "KSamplerAdvanced", "inputs": inputs}
    for node_id, node in prompt.items():
        if node["class_type"] in ("KSamplerSelect", "DarkroomKSamplerSigmas"):
            del graph[node_id]
    return graph


@pytest.fixture
def built_prompts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every graph the facade builds during the test, in order."""
    built: list[dict[str, Any]] = []
    original = Endpoint.build_prompt

    def build_prompt(self: Endpoint, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        prompt, resolved = original(self, *args, **kwargs)
        built.append(copy.deepcopy(prompt))
        return prompt, resolved

    monkeypatch.setattr(Endpoint, "build_prompt", build_prompt)
    return built


@pytest.fixture
def uploaded_inputs(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Every input image the facade puts on a worker during the test (the worker deletes its copy after
    the run; run_on_worker puts it back for the graph that names it)."""
    uploaded: dict[str, bytes] = {}
    original = ComfyClient.upload_input

    async def upload_input(self: ComfyClient, data: bytes, name: str, **kwargs: Any) -> str:
        uploaded[name] = data
        return await original(self, data, name, **kwargs)

    monkeypatch.setattr(ComfyClient, "upload_input", upload_input)
    return uploaded


async def run_on_worker(
    supervisor: Supervisor, graph: dict[str, Any], inputs: dict[str, bytes] | None = None
) -> bytes:
    """The one file a graph saves, run on the session's worker directly (not through the facade),
    with ``inputs`` (name: bytes) put in its input folder first."""
    async with supervisor.worker() as worker:
        for name, data in (inputs or {}).items():
            await worker.client.upload_input(data, name)
        events = [event async for event in worker.client.run(graph)]
        (file,) = [f for e in events if isinstance(e, cc.Executed) for f in e.files]
        return await worker.client.fetch_output(file.filename, file.subfolder, file.type)


# Requests that carry none of the new fields: their video must be the one the KSampler /
# KSamplerAdvanced graphs give, run side by side on the same worker. Today's sampler, scheduler and
# denoise overrides are included: uni_pc and dpm_2 take KSampler's discard-penultimate-sigma path,
# euler_ancestral draws noise from the seed in both experts, 5 steps split 2 + 3 between the A14B
# experts, and denoise 0.01 (the least allowed) takes the tail of a schedule 100 times as long.
LEGACY: list[tuple[str, dict[str, Any]]] = [
    (T2V_5B, {}),
    (T2V_5B, {"sampler": "dpm_2", "scheduler": "karras"}),
    (T2V_5B, {"sampler": "euler_ancestral", "denoise": 0.7}),
    (T2V_5B, {"denoise": 0.01}),  # the least denoise allowed: a 100-times longer schedule
    (I2V_5B, {}),
    (T2V_A14B, {}),
    (T2V_A14B, {"sampler": "euler_ancestral"}),
    (T2V_A14B, {"sampler": "uni_pc", "scheduler": "beta", "num_inference_steps": 5}),
    (I2V_A14B, {}),
]


@pytest.mark.parametrize(("app_id", "body"), LEGACY)
async def test_requests_without_the_new_fields_give_the_ksampler_graphs_bytes(
    facade: TestClient,
    supervisor: Supervisor,
    built_prompts: list[dict[str, Any]],
    uploaded_inputs: dict[str, bytes],
    app_id: str,
    body: dict[str, Any],
) -> None:
    ours = await video(facade, app_id, **body)
    (prompt,) = built_prompts
    legacy = ksampler_graph(prompt)
    assert {n["class_type"] for n in legacy.values()} & {"KSampler", "KSamplerAdvanced"}
    assert ours == await run_on_worker(supervisor, legacy, uploaded_inputs)


@pytest.fixture(scope="module")
def other_wan22_vae(tiny_models_dir: Path) -> Iterator[str]:
    """A second Wan 2.2 VAE (the tiny one with a dimmer decoder head), removed afterwards."""
    folder = tiny_models_dir / "vae" / "test-wan-overrides"
    folder.mkdir(exist_ok=True)
    weights = load_file(tiny_models_dir / "vae" / "tiny" / "wan22-vae.safetensors")
    weights["decoder.head.2.weight"] = weights["decoder.head.2.weight"] * 0.5
    save_file(weights, folder / "wan22-vae-dim.safetensors")
    yield "test-wan-overrides/wan22-vae-dim.safetensors"
    shutil.rmtree(folder)


FIVE_B_BLEND = [
    {"model": "tiny-wan22-ti2v-5b-fp8-scaled", "weight": 1},
    {"model": "tiny-wan22-ti2v-5b-bf16", "weight": 1},
]
A14B_MIX = [
    {"model": "tiny-wan22-a14b-high-fp8-scaled", "weight": 3},
    {"model": "tiny-wan22-a14b-low-bf16", "weight": 1},
]
CHANGES: list[tuple[str, dict[str, Any]]] = [
    (T2V_5B, {"sigmas": [1.0, 0.7, 0.4, 0.0]}),
    (I2V_A14B, {"sigmas": [1.0, 0.8, 0.5, 0.2, 0.0]}),
    (T2V_A14B, {"denoise": 0.8}),
    (T2V_5B, {"model_blend": FIVE_B_BLEND}),
    (T2V_A14B, {"model_blend": A14B_MIX}),
    (T2V_A14B, {"model_blend_2": A14B_MIX[::-1]}),
    (I2V_A14B, {"end_image_url": END}),  # first + last frame (WanFirstLastFrameToVideo)
]


@pytest.mark.parametrize(("app_id", "body"), CHANGES)
async def test_each_new_field_changes_the_video_and_reproduces(
    facade: TestClient, app_id: str, body: dict[str, Any]
) -> None:
    plain = await video(facade, app_id)
    first = await video(facade, app_id, **body)
    assert first != plain and await video(facade, app_id, **body) == first


async def test_vae_swap(facade: TestClient, other_wan22_vae: str) -> None:
    plain = await video(facade, T2V_5B)
    assert await video(facade, T2V_5B, vae="tiny-wan22-vae") == plain  # the endpoint's own VAE
    dim = await video(facade, T2V_5B, vae=other_wan22_vae)
    assert dim != plain and await video(facade, T2V_5B, vae=other_wan22_vae) == dim
    assert await video(facade, T2V_A14B, vae="tiny-wan21-vae") == await video(facade, T2V_A14B)


async def test_blend_of_one_model_is_that_model(facade: TestClient) -> None:
    alone = [{"model": "tiny-wan22-a14b-low-fp8-scaled", "weight": 1}]
    assert await video(facade, T2V_A14B, model_blend_2=alone) == await video(facade, T2V_A14B)


BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    # a Wan 2.1 VAE (16 channels) on the 5B model (48): the VAE loader refuses it by its header
    (T2V_5B, {"vae": "tiny-wan21-vae"}, ["wan21-vae.safetensors"]),
    (I2V_A14B, {"vae": "tiny-wan22-vae"}, ["wan22-vae.safetensors"]),
    # a blend must match the model it replaces: not the 5B model for an A14B expert, not a T2V expert
    # for an I2V one (same tensors but for the input channels; it would ignore the start image)
    (T2V_A14B, {"model_blend_2": [{"model": "tiny-wan22-ti2v-5b-bf16", "weight": 1}]}, ["must match"]),
    (I2V_A14B, {"model_blend": [{"model": "tiny-wan22-a14b-high-bf16", "weight": 1}]}, ["must match"]),
    (T2V_A14B, {"model_blend": [A14B_MIX[0], FIVE_B_BLEND[1]]}, ["cannot blend", "wan22-ti2v-5b-bf16"]),
    (T2V_A14B, {"sigmas": [1.0, 0.0]}, ["at least one step each"]),
    (T2V_5B, {"sigmas": [1.0, 0.5, 0.0], "denoise": 0.5}, ["leave denoise 1"]),
]


@pytest.mark.parametrize(("app_id", "body", "words"), BAD)
async def test_incompatible_fields_are_a_422_naming_the_problem(
    facade: TestClient, app_id: str, body: dict[str, Any], words: list[str]
) -> None:
    detail = await video(facade, app_id, expect=422, **body)
    assert all(w in detail for w in words), detail
    assert detail.count(words[0]) == 1, detail  # said once, not once per input ComfyUI checked
    assert "/vae/" not in detail and "/diffusion_models/" not in detail

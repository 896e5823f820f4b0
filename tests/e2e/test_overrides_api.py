"""Beyond fal's parameters, through the API on the real stack: LoRA stacks (files, URLs, hf://),
sampler/scheduler/sigmas/shift overrides, VAE swap and model blends, with tiny FLUX.2 models."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.server
import io
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from server.api.state import GENERATOR
from server.app import create_app
from server.engine.supervisor import Supervisor
from server.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

DEMO = "/run/darkroom/demo-flux-2"
LORA_A, LORA_B = "tiny/flux2-lora-a.safetensors", "tiny/flux2-lora-b.safetensors"


async def pixels(facade: TestClient, expect: int = 200, **body: Any) -> np.ndarray | dict[str, Any]:
    response = await facade.post(DEMO, json={"prompt": "a red cube", "seed": 21, **body})
    assert response.status == expect, await response.text()
    result: dict[str, Any] = await response.json()
    if expect != 200:
        return result
    url = result["images"][0]["url"]
    data = await (await facade.get("/" + url.split("://", 1)[1].split("/", 1)[1])).read()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def differs(a: Any, b: Any) -> bool:
    return bool(np.abs(a - b).max() > 0)


async def test_each_lora_changes_the_image_and_scale_zero_is_none(facade: TestClient) -> None:
    plain = await pixels(facade)
    with_a = await pixels(facade, loras=[{"path": LORA_A, "scale": 1.0}])
    with_b = await pixels(facade, loras=[{"path": LORA_B, "scale": 1.0}])
    zero = await pixels(facade, loras=[{"path": LORA_A, "scale": 0.0}])
    assert differs(plain, with_a) and differs(plain, with_b) and differs(with_a, with_b)
    assert not differs(plain, zero)


async def test_stack_order_does_not_matter(facade: TestClient) -> None:
    entries = [{"path": LORA_A, "scale": 0.7}, {"path": LORA_B, "scale": 0.5}]
    forward = await pixels(facade, loras=entries)
    backward = await pixels(facade, loras=entries[::-1])
    assert np.abs(forward - backward).max() <= 2  # float sums in another order; 8-bit pixels


async def test_kohya_and_diffusers_renderings_match_comfyui_format(facade: TestClient) -> None:
    native = await pixels(facade, loras=[{"path": LORA_A}])
    for fmt in ("kohya", "diffusers"):
        other = await pixels(facade, loras=[{"path": f"tiny/flux2-lora-a-{fmt}.safetensors"}])
        assert np.abs(native - other).max() <= 2, fmt


async def test_a_lora_of_another_family_is_a_422_naming_file_and_family(facade: TestClient) -> None:
    body = await pixels(facade, expect=422, loras=[{"path": "tiny/wan22-5b-lora-a.safetensors"}])
    assert "wan22-5b-lora-a.safetensors" in str(body["detail"]) and "another base model" in str(
        body["detail"]
    )


async def test_a_lora_path_outside_the_folder_is_refused(facade: TestClient) -> None:
    body = await pixels(facade, expect=422, loras=[{"path": "../vae/tiny/flux2-vae.safetensors"}])
    assert "LoRA folder" in str(body["detail"])


@pytest.mark.parametrize(
    "override",
    [{"sampler": "heun"}, {"scheduler": "karras"}, {"sigmas": [1.0, 0.6, 0.3, 0.0]}, {"shift": 6.0}],
)
async def test_sampling_overrides_change_the_image_and_reproduce(facade: TestClient, override: dict) -> None:
    plain = await pixels(facade)
    first = await pixels(facade, **override)
    again = await pixels(facade, **override)
    assert differs(plain, first) and not differs(first, again)


async def test_defaults_spelled_out_equal_no_overrides(facade: TestClient) -> None:
    plain = await pixels(facade)
    spelled = await pixels(facade, sampler="default", scheduler="default", shift=0, denoise=1, loras=[])
    assert not differs(plain, spelled)


async def test_unknown_sampler_is_a_422_listing_the_allowed(facade: TestClient) -> None:
    body = await pixels(facade, expect=422, sampler="warp-drive")
    (item,) = body["detail"]
    assert (
        item["loc"] == ["body", "sampler"]
        and "euler" in item["msg"]
        and "dpmpp_2m" in item["ctx"]["expected"]
    )
    document = await (await facade.get("/openapi.json")).json()
    fields = document["components"]["schemas"]["Input_darkroom_demo_flux_2"]["properties"]
    assert fields["sampler"]["enum"] == item["ctx"]["expected"]  # the running ComfyUI's own list


async def test_vae_swap_and_its_guard(facade: TestClient) -> None:
    plain = await pixels(facade)
    same_family = await pixels(facade, vae="tiny-flux2-vae")
    assert not differs(plain, same_family)
    body = await pixels(facade, expect=422, vae="tiny-flux1-ae")
    assert "flux1-ae.safetensors" in str(body["detail"]) and "FLUX.2" in str(body["detail"])
    assert "/vae/" not in str(body["detail"])  # files by name: the server's own paths stay private


async def test_model_blend_changes_the_image_and_a_bad_blend_fails_first(facade: TestClient) -> None:
    plain = await pixels(facade)
    alone = await pixels(facade, model_blend=[{"model": "tiny-flux2-fp8-scaled", "weight": 1}])
    assert not differs(plain, alone)  # the demo endpoint's own model, at full weight
    with_flux1 = [{"model": "tiny-flux2-bf16", "weight": 1}, {"model": "tiny-flux1-bf16", "weight": 1}]
    body = await pixels(facade, expect=422, model_blend=with_flux1)
    assert "flux1-bf16.safetensors" in str(body["detail"]) and "/diffusion_models/" not in str(body["detail"])


# URL LoRAs, served from loopback (allowed for this app only).


@pytest.fixture(scope="module")
def lora_server(tiny_models_dir: Path) -> Iterator[tuple[str, list[str]]]:
    served: list[str] = []
    root = tiny_models_dir / "loras" / "tiny"

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:  # noqa: N802
            served.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def open_facade(
    stack_settings: Settings, supervisor: Supervisor, lora_server
) -> AsyncIterator[TestClient]:
    settings = dataclasses.replace(
        stack_settings,
        outbound_allow_cidrs="127.0.0.1/32",
        inputs_allow_http=True,
        hf_endpoint=lora_server[0],
    )
    app = create_app(settings, supervisor, run_supervisor=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_url_loras_download_once_and_match_the_local_file(open_facade: TestClient, lora_server) -> None:
    base, served = lora_server
    local = await pixels(open_facade, loras=[{"path": LORA_A}])
    url = f"{base}/flux2-lora-a.safetensors"
    results = await asyncio.gather(*(pixels(open_facade, loras=[{"path": url}]) for _ in range(3)))
    assert all(not differs(local, r) for r in results)
    assert served.count("/flux2-lora-a.safetensors") == 1
    assert open_facade.app[GENERATOR].loras.downloads >= 1


async def test_hf_reference_and_wrong_hash(
    open_facade: TestClient, lora_server, tiny_models_dir: Path
) -> None:
    base, served = lora_server
    # hf://owner/repo/file@rev resolves to <endpoint>/owner/repo/resolve/rev/file; serve that path.
    target = tiny_models_dir / "loras" / "tiny" / "org" / "repo" / "resolve" / "v1"
    target.mkdir(parents=True, exist_ok=True)
    data = (tiny_models_dir / "loras" / LORA_B).read_bytes()
    (target / "b.safetensors").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    ok = await pixels(open_facade, loras=[{"path": "hf://org/repo/b.safetensors@v1", "sha256": sha}])
    assert not differs(ok, await pixels(open_facade, loras=[{"path": LORA_B}]))
    body = await pixels(
        open_facade, expect=422, loras=[{"path": f"{base}/flux2-lora-b.safetensors", "sha256": "0" * 64}]
    )
    assert "sha256" in str(body["detail"])


async def test_the_same_url_is_refused_under_the_default_policy(facade: TestClient, lora_server) -> None:
    base, _ = lora_server
    body = await pixels(facade, expect=422, loras=[{"path": f"{base}/flux2-lora-a.safetensors"}])
    assert "127.0.0.1" in str(body["detail"])

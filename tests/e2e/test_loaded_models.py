"""The node pack's ``GET /darkroom/loaded`` on the real worker: after a run, the files darkroom's loaders
read are listed with their kind and bytes, as ComfyUI keeps them loaded."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


async def test_a_run_leaves_its_model_files_listed(facade: TestClient, supervisor: Supervisor) -> None:
    response = await facade.post("/run/darkroom/demo-flux-2", json={"prompt": "what is loaded", "seed": 3})
    assert response.status == 200, await response.text()
    models = await supervisor.workers[0].client.loaded_models()
    manifest = load_manifest()
    listed = {(m["kind"], tuple(m["files"] or ())): m for m in models}
    for kind, name in [
        ("diffusion_model", "tiny-flux2-fp8-scaled"),
        ("text_encoder", "tiny-mistral3-flux2"),
        ("vae", "tiny-flux2-vae"),
    ]:
        entry = listed.get((kind, (manifest.get(name).folder_name,)))
        assert entry is not None, f"{name} ({kind}) not among {sorted(listed)}"
        assert entry["device"] == "cpu" and 0 < entry["loaded_bytes"] <= entry["size_bytes"], entry

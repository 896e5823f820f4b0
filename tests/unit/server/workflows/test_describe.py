"""An endpoint described for a form: field order, bounds, choices, the advanced group, model files."""

from __future__ import annotations

from server.engine.models import load_manifest
from server.workflows.describe import describe
from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints
from server.workflows.published import endpoint_from_prompt
from tests.marked import marked_flux2

MANIFEST = load_manifest()
ENDPOINTS = load_endpoints(WORKFLOWS_DIR, MANIFEST)


def test_required_fields_first_then_the_mapping_order() -> None:
    names = [f["name"] for f in describe(ENDPOINTS["darkroom/demo-wan-2.2-5b-i2v"], MANIFEST, None)["fields"]]
    assert names[:2] == ["prompt", "image_url"]
    assert names.index("negative_prompt") < names.index("num_frames") < names.index("loras")


def test_sampler_lists_come_from_comfyui_when_known() -> None:
    lists = {"sampler": ["euler", "dpmpp_2m"], "scheduler": ["simple", "beta"]}
    fields = {f["name"]: f for f in describe(ENDPOINTS["darkroom/demo-flux-2"], MANIFEST, lists)["fields"]}
    assert fields["sampler"]["choices"] == ["default", "euler", "dpmpp_2m"]
    assert fields["scheduler"]["choices"] == ["default", "simple", "beta"]
    assert fields["seed"]["ge"] == 0 and fields["seed"]["le"] == 2**63 - 1
    assert fields["image_size"]["multiple_of"] == 16 and fields["image_size"]["le"] == 512


def test_model_files_bound_by_the_mapping_or_named_in_a_published_graph() -> None:
    described = describe(ENDPOINTS["darkroom/demo-flux-2"], MANIFEST, None)
    assert described["models"] == ["tiny-flux2-fp8-scaled", "tiny-mistral3-flux2", "tiny-flux2-vae"]
    published = endpoint_from_prompt("me/art", marked_flux2(MANIFEST), node_types=None, manifest=MANIFEST)
    assert set(describe(published, MANIFEST, None)["models"]) == set(described["models"])

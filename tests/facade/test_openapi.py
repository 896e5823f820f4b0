"""The OpenAPI document generated from the mappings, and the docs page."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from server.api.openapi import build_document, render_docs
from server.engine.models import load_manifest
from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints


@pytest.fixture(scope="module")
def endpoints():
    return load_endpoints(WORKFLOWS_DIR, load_manifest())


@pytest.fixture(scope="module")
def document(endpoints):
    return build_document(endpoints)


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_endpoint_has_an_operation(document, endpoints):
    assert set(document["paths"]) == {f"/run/{app_id}" for app_id in endpoints}


def test_fields_carry_their_ranges_and_defaults(document):
    schemas = document["components"]["schemas"]
    steps = schemas["Input_fal_ai_flux_2"]["properties"]["num_inference_steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (4, 50, 28)
    demo_size = schemas["Input_darkroom_demo_flux_2_image_size"]["properties"]["width"]
    real_size = schemas["Input_fal_ai_flux_2_image_size"]["properties"]["width"]
    assert (demo_size["minimum"], demo_size["maximum"]) == (16, 512)
    assert (real_size["minimum"], real_size["maximum"]) == (512, 2048)
    assert schemas["Input_fal_ai_flux_2"]["required"] == ["prompt"]


def test_video_endpoints_document_a_video_output(document):
    response = document["paths"]["/run/fal-ai/wan/v2.2-5b/text-to-video"]["post"]["responses"]["200"]
    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/VideoOutput")


def test_docs_page_lists_every_endpoint_and_field(document, endpoints):
    page = render_docs(document)
    for app_id in endpoints:
        assert f"POST /run/{app_id}" in page
    assert "num_inference_steps" in page and "maximum 50" in page


def test_parameters_beyond_fal_are_listed_with_their_ranges(document):
    schemas = document["components"]["schemas"]
    fields = schemas["Input_fal_ai_flux_2"]["properties"]
    assert fields["loras"]["maxItems"] == 8 and fields["loras"]["default"] == []
    assert (fields["shift"]["minimum"], fields["shift"]["maximum"]) == (0, 100)
    assert (fields["denoise"]["minimum"], fields["denoise"]["maximum"]) == (0, 1)
    assert fields["sampler"]["default"] == fields["scheduler"]["default"] == "default"
    assert {"sigmas", "vae", "model_blend"} <= set(fields)
    lora = schemas["LoraEntry"]["properties"]
    assert (lora["scale"]["minimum"], lora["scale"]["maximum"]) == (-8, 8)
    assert lora["expert"]["enum"] == ["high", "low", "both"]
    wan = schemas["Input_fal_ai_wan_v2_2_a14b_text_to_video"]["properties"]
    assert "loras" in wan and "sampler" in wan


@pytest.mark.parametrize(
    "app_id",
    [f"fal_ai_wan_v2_2_{m}_{task}" for m in ("5b", "a14b") for task in ("text_to_video", "image_to_video")]
    + [f"darkroom_demo_wan_2_2_{m}_{task}" for m in ("5b", "a14b") for task in ("t2v", "i2v")],
)
def test_wan_endpoints_list_schedule_vae_and_blend_fields(document, app_id):
    fields = document["components"]["schemas"][f"Input_{app_id}"]["properties"]
    assert {"sampler", "scheduler", "sigmas", "denoise", "vae", "model_blend"} <= set(fields)
    assert fields["shift"]["minimum"] == 1  # fal's own shift, not FLUX's override (0 = the model's)
    blends = {"model_blend", "model_blend_2"} & set(fields)
    assert blends == ({"model_blend", "model_blend_2"} if "a14b" in app_id else {"model_blend"})
    assert all("expert" in fields[b]["description"] for b in blends if "a14b" in app_id)
    assert ("end_image_url" in fields) == any(t in app_id for t in ("a14b_image", "a14b_i2v"))


def test_sampler_fields_list_comfyuis_names_once_a_worker_told_them(endpoints):
    lists = {"sampler": ["euler", "heun"], "scheduler": ["simple", "karras"]}
    schemas = build_document(endpoints, lists)["components"]["schemas"]
    for app_id in ("Input_fal_ai_flux_2", "Input_fal_ai_wan_v2_2_a14b_text_to_video"):
        fields = schemas[app_id]["properties"]
        assert fields["sampler"]["enum"] == ["default", "euler", "heun"]
        assert fields["scheduler"]["enum"] == ["default", "simple", "karras"]
    assert (
        "enum"
        not in build_document(endpoints)["components"]["schemas"]["Input_fal_ai_flux_2"]["properties"][
            "sampler"
        ]
    )

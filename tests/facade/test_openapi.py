"""The OpenAPI document: every route of the app, from each handler's @operation and the mappings."""

from __future__ import annotations

import tempfile

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from server.api.openapi import PER_APP, build_document
from server.api.state import ENDPOINTS
from server.app import create_app
from server.errors import ConfigError
from server.settings import load_settings
from tests.fakes import IdleSupervisor


@pytest.fixture(scope="module")
def app():
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings({}, data_dir=data_dir, api_keys="doc-key")
        yield create_app(settings, IdleSupervisor(ready=False), run_supervisor=False)


@pytest.fixture(scope="module")
def endpoints(app):
    return {k: e for k, e in app[ENDPOINTS].items() if not e.raw}


def build(app, lists=None):
    return build_document(app.router.routes(), app[ENDPOINTS], lists)


@pytest.fixture(scope="module")
def document(app):
    return build(app)


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_and_every_app_has_an_operation(document, app, endpoints):
    for route in app.router.routes():
        method, path = route.method, route.resource.canonical
        if (method, path) in PER_APP:
            for app_id in endpoints:
                assert method.lower() in document["paths"][path.replace("{path}", app_id)], (method, app_id)
        else:
            assert method.lower() in document["paths"][path], (method, path)  # HEAD too, where served
    assert "/run/{path}" not in document["paths"], "run and queue submit: one operation per app instead"


def test_who_may_call_follows_the_auth_rules(document):
    paths = document["paths"]
    assert (
        paths["/health"]["get"]["security"] == []
        and paths["/files/{request_id}/{name}"]["get"]["security"] == []
    )
    assert paths["/queue/{base}/requests/{request_id}"]["get"]["security"] == [{"key": []}, {"session": []}]
    assert paths["/run/{path}/stream"]["post"]["security"] == [{"key": []}, {"token": []}]
    assert {"key": []} in paths["/ws"]["get"]["security"] and {"token": []} in paths["/ws"]["get"]["security"]
    assert paths["/files/uploads/{upload_id}/{name}"]["put"]["security"] == [{"capability": []}]
    assert (
        "401" not in paths["/health"]["get"]["responses"] and "401" in paths["/workflows"]["get"]["responses"]
    )
    cancel = paths["/queue/{base}/requests/{request_id}/cancel"]["put"]["responses"]
    assert cancel["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/CancelBody")
    submit = paths["/queue/darkroom/demo-flux-2"]["post"]["responses"]
    assert {"200", "404", "422", "429", "500"} <= set(submit)
    assert submit["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueueSubmitted")


def test_a_route_without_an_operation_fails_the_build(app):
    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    routes = [*app.router.routes(), web.RouteDef("GET", "/x", undocumented, {})]
    extra = web.Application()
    extra.router.add_routes(routes[-1:])
    with pytest.raises(ConfigError, match="GET /x .*has no @operation"):
        build_document([*app.router.routes(), *extra.router.routes()], app[ENDPOINTS])


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


def test_parameters_beyond_fal_are_listed_with_their_ranges(document):
    schemas = document["components"]["schemas"]
    fields = schemas["Input_fal_ai_flux_2"]["properties"]
    assert fields["loras"]["maxItems"] == 8 and fields["loras"]["default"] == []
    assert (fields["shift"]["minimum"], fields["shift"]["maximum"]) == (0, 100)
    assert (fields["denoise"]["minimum"], fields["denoise"]["maximum"]) == (0.01, 1)
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


def test_sampler_fields_list_comfyuis_names_once_a_worker_told_them(app):
    lists = {"sampler": ["euler", "heun"], "scheduler": ["simple", "karras"]}
    schemas = build(app, lists)["components"]["schemas"]
    for app_id in ("Input_fal_ai_flux_2", "Input_fal_ai_wan_v2_2_a14b_text_to_video"):
        fields = schemas[app_id]["properties"]
        assert fields["sampler"]["enum"] == ["default", "euler", "heun"]
        assert fields["scheduler"]["enum"] == ["default", "simple", "karras"]
    assert "enum" not in build(app)["components"]["schemas"]["Input_fal_ai_flux_2"]["properties"]["sampler"]


def test_routes_that_read_a_body_document_its_limits(document):
    """request.py refuses a body too large (413) or too slow (408) on every route that reads one."""
    for path in ("/run/darkroom/demo-flux-2", "/queue/darkroom/demo-flux-2", "/storage/upload/initiate"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"408", "413", "422"} <= set(responses), (path, sorted(responses))


def test_parameters_say_exactly_what_the_server_takes(document):
    """Issue 22: each header and query parameter with the enum, pattern or format its handler checks;
    path parameters with their route's pattern."""
    submit = document["paths"]["/queue/darkroom/demo-flux-2"]["post"]
    schemas = {p["name"]: p["schema"] for p in submit["parameters"]}
    assert schemas["X-Fal-Queue-Priority"] == {"type": "string", "enum": ["normal", "low"]}
    assert schemas["fal_webhook"]["format"] == "uri" and schemas["fal_webhook"]["pattern"].startswith(
        "^https?://"
    )
    assert {"pattern"} <= set(schemas["X-Fal-Request-Timeout"]) and {"pattern"} <= set(
        schemas["fal_max_queue_length"]
    )
    initiate = document["paths"]["/storage/upload/initiate"]["post"]["parameters"]
    assert initiate[0]["schema"]["enum"] == ["fal-cdn-v3", "fal-cdn", "gcs"]
    version = document["paths"]["/workflows/{owner}/{name}/versions/{version}"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("pattern") for p in version}["version"] == "^(?:[0-9]+)$"
    part = document["paths"]["/files/uploads/{upload_id}/{name}/multipart/{multipart_id}/{part}"]["put"]
    assert {p["name"]: p["schema"].get("pattern") for p in part["parameters"]}["part"].startswith("^([1-9]")


def test_every_422_names_its_error_types_and_refusals_are_declared(document):
    """A 422 is validation_error (what the schema says) or a refusal the operation declares by error
    type; the fuzz drill tolerates exactly those (x-darkroom-refusals)."""
    seen = 0
    for path, item in document["paths"].items():
        for verb, op in item.items():
            response = op["responses"].get("422")
            if response is None or "application/json" not in response.get("content", {}):  # HEADs: no body
                continue
            types = response["content"]["application/json"]["schema"]["properties"]["error_type"]["enum"]
            assert types[0] == "validation_error" and types[1:] == response.get("x-darkroom-refusals", []), (
                verb,
                path,
            )
            seen += 1
    assert seen > 40
    run = document["paths"]["/run/darkroom/demo-flux-2"]["post"]["responses"]
    assert run["422"]["x-darkroom-refusals"] == ["input_error", "address_not_allowed"]
    assert document["paths"]["/workflows"]["post"]["responses"]["422"]["x-darkroom-refusals"] == [
        "not_publishable"
    ]

"""The safety checker's plumbing: the field from the shared block, the node it puts in the graph, the
verdicts the response carries, the load-time checks and the start-up warning."""

from __future__ import annotations

import pytest

from server.settings import PROJECT_ROOT
from server.workflows.mapping import MappingError, load_endpoints
from server.workflows.safety import CHECKER_NODE, Verdicts, checker_field, missing_checkers, verdicts
from tests.unit.server.workflows.test_mapping import WORKFLOWS, _write_mapping, endpoints, manifest

__all__ = ["endpoints", "manifest"]  # the fixtures, shared with test_mapping

BODY = {"prompt": "a cat", "seed": 1}


def test_every_image_endpoint_takes_the_field_from_the_shared_block(endpoints) -> None:
    images = {app: e for app, e in endpoints.items() if e.output.kind == "images"}
    assert images and all(checker_field(e.params) == "enable_safety_checker" for e in images.values())
    for app, endpoint in images.items():
        spec = endpoint.params["enable_safety_checker"]
        assert spec.default is True and not spec.advanced, app  # fal's default on its image endpoints
        assert spec.checker == (
            "tiny-nsfw-vit" if app.startswith("darkroom/demo-") else "nsfw-image-detection"
        )


def test_on_the_checker_sits_before_the_save_node_and_off_the_graph_is_the_workflows(
    endpoints, manifest
) -> None:
    endpoint = endpoints["darkroom/demo-flux-2"]
    off, _ = endpoint.build_prompt(endpoint.validate({**BODY, "enable_safety_checker": False}), manifest)
    on, resolved = endpoint.build_prompt(endpoint.validate(BODY), manifest)
    assert resolved["enable_safety_checker"] is True and CHECKER_NODE not in off
    save = endpoint.output.node
    assert on[CHECKER_NODE] == {
        "class_type": "DarkroomSafetyChecker",
        "inputs": {
            "images": off[save]["inputs"]["images"],
            "checker_name": "tiny/nsfw-vit.safetensors",
            "sample_frames": 0,
        },
        "_meta": {"title": "Safety checker"},
    }
    assert on[save]["inputs"]["images"] == [CHECKER_NODE, 0] and on[save]["inputs"]["safety"] == [
        CHECKER_NODE,
        1,
    ]
    del on[CHECKER_NODE], on[save]["inputs"]["safety"]
    on[save]["inputs"]["images"] = off[save]["inputs"]["images"]
    assert on == off, "the checker is the only difference"
    real = endpoints["fal-ai/flux-2"]
    prompt, _ = real.build_prompt(real.validate(BODY), manifest)
    assert prompt[CHECKER_NODE]["inputs"]["checker_name"] == "falconsai-nsfw-image-detection.safetensors"


def test_verdicts_say_what_ran(endpoints) -> None:
    params = endpoints["darkroom/demo-flux-2"].params
    on, off = {"enable_safety_checker": True}, {"enable_safety_checker": False}
    checked = [{"has_nsfw_concept": True}, {"has_nsfw_concept": False}]
    assert verdicts(params, on, checked) == Verdicts([True, False])
    assert verdicts(params, on, checked).flagged == 1
    unchecked = verdicts(params, off, [{}, {}])
    assert unchecked.flags == [None, None] and "enable_safety_checker is false" in (unchecked.note or "")
    assert not unchecked.failed
    absent = [{"has_nsfw_concept": None, "safety_note": "the weights are absent"}]
    assert verdicts(params, on, absent) == Verdicts([None], "the weights are absent", failed=True)
    silent = verdicts(params, on, [{}])  # a save node that reported nothing: never taken for a pass
    assert silent.flags == [None] and silent.failed
    none = verdicts(endpoints["darkroom/demo-esrgan"].params, {}, [{}])
    assert none.flags == [None] and "no safety checker" in (none.note or "")


def test_the_response_carries_the_verdicts(endpoints) -> None:
    from server.generation.generator import ModelCalls, _response

    endpoint = endpoints["darkroom/demo-flux-2"]
    files = [{"url": "u"}, {"url": "v"}]
    checked = Verdicts([True, None], "why", True)
    body = _response(endpoint, files, {"seed": 1, "prompt": "p"}, 0.5, checked, ModelCalls(7, 3, runs=1))
    assert body["has_nsfw_concepts"] == [True, None]
    assert body["timings"] == {"inference": 0.5, "model_evaluations": 7, "model_evaluations_reused": 3}
    uncounted = _response(endpoint, files, {"seed": 1, "prompt": "p"}, 0.5, checked, ModelCalls())
    assert uncounted["timings"] == {"inference": 0.5}, "no sampling run counted: no count claimed"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("{checker: tiny-flux2-vae}", "not a safety_checker entry"),
        ("{checker: nope}", "not a safety_checker entry"),
        ('{to: ["13.format"]}', "a boolean with no targets"),
    ],
)
def test_a_bad_checker_field_fails_at_load(tmp_path, manifest, override, match) -> None:
    text = (WORKFLOWS / "flux-2.yaml").read_text()
    text = text.replace(
        "enable_safety_checker: {checker: tiny-nsfw-vit}", f"enable_safety_checker: {override}", 1
    )
    with pytest.raises(MappingError, match=match):
        load_endpoints(_write_mapping(tmp_path, text), manifest)


def test_an_absent_classifier_is_a_start_up_warning_naming_the_endpoints_and_the_fix(
    endpoints, manifest, tmp_path
) -> None:
    served = [(app, e.params) for app, e in endpoints.items()]
    real = [(app, params) for app, params in served if not app.startswith("darkroom/demo-")]
    (warning,) = missing_checkers(real, manifest, tmp_path / "no-models")
    assert "safety_checkers/falconsai-nsfw-image-detection.safetensors" in warning
    assert "darkroom models fetch nsfw-image-detection --unpinned" in warning and "fal-ai/flux-2" in warning
    tiny = [(app, params) for app, params in served if app.startswith("darkroom/demo-")]
    assert missing_checkers(tiny, manifest, PROJECT_ROOT / "data" / "models") == []


def test_a_video_endpoint_checks_sampled_frames_only_when_asked_and_says_so_beyond_fals_schema(
    endpoints, manifest
) -> None:
    from server.generation.generator import ModelCalls, _response

    for app, endpoint in endpoints.items():
        if endpoint.output.kind == "video" and "hunyuan-video" in app:
            # fal's HunyuanVideo 1.5 schemas have no safety fields, and darkroom's have none either
            assert checker_field(endpoint.params) is None and "enable_safety_checker" not in endpoint.params
        elif endpoint.output.kind == "video" and "enable_output_safety_checker" not in endpoint.params:
            # LTX-2: fal's one checker field, enable_safety_checker, checks the output video
            assert checker_field(endpoint.params) == "enable_safety_checker", app
        elif endpoint.output.kind == "video":
            spec = endpoint.params["enable_output_safety_checker"]
            assert (
                spec.default is False and checker_field(endpoint.params) == "enable_output_safety_checker"
            ), app
            assert endpoint.params["enable_safety_checker"].honoured == [False], (
                app
            )  # the input check: not built
    endpoint = endpoints["darkroom/demo-wan-2.2-5b-t2v"]
    body = {"prompt": "a wave", "seed": 1}
    off, resolved_off = endpoint.build_prompt(endpoint.validate(body), manifest)
    on, resolved_on = endpoint.build_prompt(
        endpoint.validate({**body, "enable_output_safety_checker": True}), manifest
    )
    assert CHECKER_NODE not in off and on[CHECKER_NODE]["inputs"]["sample_frames"] == 8
    files = [{"url": "v"}]
    calls = ModelCalls(4, 0)
    assert "has_nsfw_concepts" not in _response(
        endpoint, files, resolved_off, 1.0, Verdicts([None], "off"), calls
    )
    assert _response(endpoint, files, resolved_on, 1.0, Verdicts([False]), calls)["has_nsfw_concepts"] == [
        False
    ]

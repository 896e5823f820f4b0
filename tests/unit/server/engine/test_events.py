"""Parsing ComfyUI's WebSocket frames and its POST /prompt validation errors (frames recorded from v0.8.0)."""

from __future__ import annotations

import json
import struct

import pytest

from server.engine.events import (
    Cached,
    Evaluations,
    Executed,
    Executing,
    ExecutionError,
    Interrupted,
    Loss,
    OutputFile,
    Preview,
    Progress,
    Removed,
    Started,
    Status,
    Success,
    is_terminal,
    parse_binary,
    parse_message,
)
from server.errors import ComfyValidationError

PID = "d81c377e068047efa9444c12ef314239"

RECORDED_RUN = [
    '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "d24c033c"}}',
    '{"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}',
    '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}',
    f'{{"type": "execution_start", "data": {{"prompt_id": "{PID}", "timestamp": 1795320985478}}}}',
    f'{{"type": "execution_cached", "data": {{"nodes": [], "prompt_id": "{PID}", "timestamp": 1795}}}}',
    f'{{"type": "progress_state", "data": {{"prompt_id": "{PID}", "nodes": {{"1": {{"value": 0.0, '
    f'"max": 1.0, "state": "running", "node_id": "1", "prompt_id": "{PID}"}}}}}}}}',
    f'{{"type": "executing", "data": {{"node": "1", "display_node": "1", "prompt_id": "{PID}"}}}}',
    f'{{"type": "progress", "data": {{"value": 1, "max": 3, "prompt_id": "{PID}", "node": "1"}}}}',
    f'{{"type": "executing", "data": {{"node": "2", "display_node": "2", "prompt_id": "{PID}"}}}}',
    f'{{"type": "executed", "data": {{"node": "2", "display_node": "2", "output": {{"images": [{{"filename": '
    f'"t_00001_.png", "subfolder": "", "type": "output"}}]}}, "prompt_id": "{PID}"}}}}',
    f'{{"type": "execution_success", "data": {{"prompt_id": "{PID}", "timestamp": 1795320985496}}}}',
    '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}',
    f'{{"type": "executing", "data": {{"node": null, "prompt_id": "{PID}"}}}}',
]


def test_a_recorded_run_parses_to_typed_events() -> None:
    parsed = [parse_message(json.loads(frame)) for frame in RECORDED_RUN]
    assert parsed == [
        Status(0),
        None,  # feature_flags: the reply to our announcement
        Status(1),
        Started(PID),
        Cached(PID, ()),
        None,  # progress_state duplicates progress
        Executing(PID, "1"),
        Progress(PID, "1", 1.0, 3.0),
        Executing(PID, "2"),
        Executed(PID, "2", {"images": [{"filename": "t_00001_.png", "subfolder": "", "type": "output"}]}),
        Success(PID),
        Status(0),
        Executing(PID, None),
    ]
    executed = parsed[9]
    assert isinstance(executed, Executed)
    assert executed.files == [OutputFile("t_00001_.png", "", "output")]


def test_cached_nodes_and_terminal_events() -> None:
    cached = parse_message({"type": "execution_cached", "data": {"nodes": ["1", "2"], "prompt_id": PID}})
    assert cached == Cached(PID, ("1", "2"))
    assert [
        is_terminal(e) for e in (Success(PID), Removed(PID), Executing(PID, None), Executing(PID, "3"))
    ] == [
        True,
        True,
        True,
        False,
    ]


def test_execution_error_frame() -> None:
    frame = {
        "type": "execution_error",
        "data": {
            "prompt_id": PID,
            "node_id": "3",
            "node_type": "ImageScaleBy",
            "executed": ["1"],
            "exception_message": "Input and output sizes should be greater than 0\n",
            "exception_type": "RuntimeError",
            "traceback": ['  File "execution.py", line 518, in execute\n'],
            "current_inputs": {},
            "current_outputs": ["1"],
            "timestamp": 1795320994690,
        },
    }
    event = parse_message(frame)
    assert event == ExecutionError(
        PID,
        "3",
        "ImageScaleBy",
        "Input and output sizes should be greater than 0",
        "RuntimeError",
        ('  File "execution.py", line 518, in execute\n',),
    )
    assert is_terminal(event)


def test_interrupted_frame() -> None:
    frame = {
        "type": "execution_interrupted",
        "data": {"prompt_id": PID, "node_id": "3", "node_type": "DarkroomTestSlow", "executed": ["1"]},
    }
    assert parse_message(frame) == Interrupted(PID, "3", "DarkroomTestSlow")


def test_unknown_and_malformed_frames_are_ignored() -> None:
    assert parse_message({"type": "crystools.monitor", "data": {"cpu": 3}}) is None
    assert parse_message({"type": "executing"}) is None


def test_binary_preview_type_1() -> None:
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF"
    assert parse_binary(struct.pack(">II", 1, 1) + jpeg) == Preview(jpeg, "jpeg")
    assert parse_binary(struct.pack(">II", 1, 2) + b"\x89PNG") == Preview(b"\x89PNG", "png")


def test_binary_preview_type_4_with_metadata() -> None:
    header = json.dumps(
        {
            "node_id": "3",
            "prompt_id": PID,
            "display_node_id": "3",
            "parent_node_id": None,
            "real_node_id": "3",
            "image_type": "image/jpeg",
        }
    ).encode()
    frame = struct.pack(">II", 4, len(header)) + header + b"\xff\xd8jpeg-bytes"
    assert parse_binary(frame) == Preview(b"\xff\xd8jpeg-bytes", "jpeg", PID, "3")


@pytest.mark.parametrize("frame", [b"", b"\x00\x00\x00\x01", struct.pack(">I", 3) + b"\x00\x00\x00\x05text!"])
def test_other_binary_frames_are_ignored(frame: bytes) -> None:
    assert parse_binary(frame) is None


def test_validation_error_names_node_input_and_reason() -> None:
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "value_smaller_than_min",
                        "message": "Value 0 smaller than min of 1",
                        "details": "width",
                        "extra_info": {
                            "input_name": "width",
                            "input_config": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                            "received_value": 0,
                        },
                    },
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "height",
                        "extra_info": {"input_name": "height"},
                    },
                ],
                "dependent_outputs": ["2"],
                "class_type": "EmptyImage",
            }
        },
    }
    error = ComfyValidationError.from_response(body)
    assert (error.node_id, error.class_type, error.input_name) == ("1", "EmptyImage", "width")
    assert [(e.input_name, e.type) for e in error.node_errors] == [
        ("width", "value_smaller_than_min"),
        ("height", "required_input_missing"),
    ]
    assert error.error_type == "prompt_outputs_failed_validation"
    assert str(error) == (
        "ComfyUI rejected the prompt: Prompt outputs failed validation: "
        "node 1 (EmptyImage) input 'width': Value 0 smaller than min of 1 [width]; "
        "node 1 (EmptyImage) input 'height': Required input is missing [height]"
    )
    assert (error.status, error.code) == (500, "workflow_validation_error")


def test_validation_error_without_node_errors() -> None:
    body = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node Nope does not exist.",
            "details": "Node ID '#1'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    error = ComfyValidationError.from_response(body)
    assert error.node_id is None and error.node_errors == []
    assert error.error_type == "invalid_prompt"
    assert "node Nope does not exist. (Node ID '#1')" in str(error)


def test_the_packs_evaluation_count_is_an_event_of_its_prompt() -> None:
    frame = {"type": "darkroom.evaluations", "data": {"prompt_id": PID, "node": "12", "evaluated": 5,
             "reused": 3, "forward_passes": 5, "cache": "EasyCache"}}  # fmt: skip
    assert parse_message(frame) == Evaluations(PID, "12", 5, 3, "EasyCache")
    frame["data"].update(cache=None, node=None)
    assert parse_message(frame) == Evaluations(PID, None, 5, 3, None)
    assert not is_terminal(Evaluations(PID, "12", 5, 3, None))


def test_the_packs_training_loss_is_an_event_of_its_prompt() -> None:
    frame = {"type": "darkroom.loss", "data": {"prompt_id": PID, "node": "6", "step": 3, "total": 24,
             "loss": 0.25}}  # fmt: skip
    assert parse_message(frame) == Loss(PID, "6", 3, 24, 0.25)
    frame["data"].update(loss=None)
    assert parse_message(frame) == Loss(PID, "6", 3, 24, None)
    assert not is_terminal(Loss(PID, "6", 3, 24, None))

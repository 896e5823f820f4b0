"""The DarkroomInput* nodes: public ids, every input documented, values pass through unchanged."""

from __future__ import annotations

import pytest
from darkroom.nodes import inputs
from darkroom.nodes.inputs import (
    DarkroomInputChoice,
    DarkroomInputImageSize,
    DarkroomInputText,
    parse_choices,
)


def test_ids_categories_and_tooltips() -> None:
    schemas = [node.define_schema() for node in inputs.NODES]
    assert [s.node_id for s in schemas] == [
        "DarkroomInputText", "DarkroomInputInt", "DarkroomInputFloat", "DarkroomInputBoolean",
        "DarkroomInputChoice", "DarkroomInputSeed", "DarkroomInputImage", "DarkroomInputImageSize",
        "DarkroomInputLoras",
    ]  # fmt: skip
    for schema in schemas:
        assert schema.category == "darkroom/inputs" and schema.description
        assert [i.id for i in schema.inputs][:2] == ["field", "description"]
        assert all(i.tooltip for i in schema.inputs), schema.node_id


def test_values_pass_through() -> None:
    assert DarkroomInputText.execute(field="prompt", value="a cat", required=True, max_length=10).result == (
        "a cat",
    )
    size = DarkroomInputImageSize.execute(
        field="image_size", width=96, height=64, min_side=16, max_side=512, multiple_of=16
    )
    assert size.result == (96, 64)
    assert DarkroomInputChoice.execute(field="f", choices="a, b", value="b").result == ("b",)


@pytest.mark.parametrize(
    ("choices", "value", "expected"),
    [("png, jpeg", "png", True), ("png\njpeg", "gif", "not one of the choices"), (" , ", "x", "empty")],
)
def test_choice_validation(choices: str, value: str, expected: bool | str) -> None:
    result = DarkroomInputChoice.validate_inputs(choices=choices, value=value)
    assert result is True if expected is True else expected in str(result)
    assert parse_choices("a, b\nc,,") == ["a", "b", "c"]

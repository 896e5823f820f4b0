"""Every request model takes JSON types strictly (issue 22): a boolean where a number is expected, a number
where a boolean is, a string where an integer is, each is a 422 naming the field and the expected type,
never a coerced value (``weight: false`` silently becoming 0).

The models are read from the real app: each route's declared body (``@operation(body=...)``) and each
endpoint's request model (run, queue, realtime and /ws submit validate with it), so a model added later
is checked without editing this file. Each typed field is found in the model's JSON schema, nested ones
too (a blend entry's ``weight``, a custom ``image_size``'s ``width``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from server.api.described import operation_of
from server.api.state import ENDPOINTS
from server.app import create_app
from server.errors import RequestValidationError
from server.settings import load_settings
from tests.fakes import IdleSupervisor

# JSON type -> (a wrong value of another JSON type, the pydantic error type, what the message says)
WRONG = {
    "number": (True, "float_type", "valid number"),
    "boolean": (1, "bool_type", "valid boolean"),
    "integer": ("3", "int_type", "valid integer"),
}


def request_models() -> dict[str, type[BaseModel]]:
    """Every model a request body is validated with, by name."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(
            load_settings({}, data_dir=data_dir, api_keys="k"),
            IdleSupervisor(),
            run_supervisor=False,  # type: ignore[arg-type]
        )
        models = {e.request_model.__name__: e.request_model for e in app[ENDPOINTS].values()}
        for route in app.router.routes():
            described = operation_of(route.handler)
            if described is not None and isinstance(described.body, type):
                models[described.body.__name__] = described.body
    return models


MODELS = request_models()


def typed_fields(schema: dict[str, Any], defs: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[
    tuple[tuple[str | int, ...], str]
]:  # fmt: skip
    """(where in the body, JSON type) of every number, integer and boolean field under ``schema``."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from typed_fields(branch, defs, path)
    kind = schema.get("type")
    if kind in WRONG:
        yield path, kind
    elif kind == "array" and "items" in schema:
        yield from typed_fields(schema["items"], defs, (*path, 0))
    for name, field in schema.get("properties", {}).items():
        yield from typed_fields(field, defs, (*path, name))


def fields_of(model: type[BaseModel]) -> list[tuple[tuple[str | int, ...], str]]:
    schema = model.model_json_schema()
    return sorted(set(typed_fields(schema, schema.get("$defs", {}))), key=str)


def body_with(path: tuple[str | int, ...], value: Any) -> Any:
    """A body holding ``value`` at ``path`` (an index: a one-item list)."""
    for step in reversed(path):
        value = [value] if isinstance(step, int) else {step: value}
    return value


CASES = [(name, path, kind) for name, model in sorted(MODELS.items()) for path, kind in fields_of(model)]


def test_the_walk_sees_every_kind_of_request_model() -> None:
    assert {"PublishBody", "TokenRequest", "InitiateBody", "CompleteBody", "EditorRun"} <= set(MODELS)
    kinds = {kind for _, _, kind in CASES}
    assert kinds == set(WRONG), kinds
    nested = {(name, path) for name, path, _ in CASES if len(path) > 1}
    assert any(path[-1] == "weight" for _, path in nested), "no blend entry's weight was found"


@pytest.mark.parametrize(
    ("name", "path", "kind"), CASES, ids=[f"{n}.{'.'.join(map(str, p))}" for n, p, _ in CASES]
)
def test_a_value_of_another_json_type_is_a_422_naming_the_field_and_type(
    name: str, path: tuple[str | int, ...], kind: str
) -> None:
    wrong, error_type, expected = WRONG[kind]
    with pytest.raises(ValidationError) as raised:
        MODELS[name].model_validate(body_with(path, wrong))
    refusal = RequestValidationError.from_pydantic(raised.value)
    assert refusal.status == 422
    named = [e for e in refusal.errors if e["loc"][1] == path[0] and e["loc"][-1] == path[-1]]
    assert any(e["type"] == error_type and expected in e["msg"] for e in named), (
        f"{name}: {wrong!r} at {path} gave {refusal.errors}"
    )

"""JSON's types as the request models take them (strict pydantic at the edge, issue 22).

JSON has one number type: ``1.0`` is as much an integer as ``1`` (JSON Schema agrees), so an integer
field takes a number with no fractional part; it takes no boolean and no string. Number fields take
any JSON number (pydantic's strict float takes integers), boolean fields only true and false.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _whole(value: Any) -> Any:
    """A float with no fractional part as the int it is; anything else as it came (for strict int)."""
    return int(value) if type(value) is float and value.is_integer() else value


WHOLE = BeforeValidator(_whole)  # for Annotated[int, Field(bounds), WHOLE] in static annotations
JsonInt = Annotated[int, WHOLE]


def json_int(*, ge: int | None = None, le: int | None = None) -> Any:
    """JsonInt within bounds, the bounds inside the type: in a union (``... | None``) bounds given on the
    field would not reach the JSON schema."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole)]

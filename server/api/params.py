"""Header and query parameters declared once: the schema the OpenAPI document shows (an enum, a pattern,
a format) and the check the handler runs are the same ``Param``, so the document and the server cannot
drift apart (a client generated from the document sends exactly what the server takes).

A present parameter that breaks its schema is a 422 naming it, an empty value included (the document
allows no empty value where it gives a pattern or an enum); an absent one is ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import RequestValidationError

Where = Literal["query", "header"]

# Seconds greater than 0 (at least one non-zero digit), plain decimal notation.
POSITIVE_SECONDS = r"^(?=[0-9.]*[1-9])([0-9]{1,12}(\.[0-9]{1,9})?|\.[0-9]{1,9})$"
WHOLE_NUMBER = r"^[0-9]{1,9}$"
# http(s), an ASCII host name or address (an IDN in its xn-- form), an optional port and path
HTTP_URL = r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][!-~]*)?(?![\s\S])"


@dataclass(frozen=True)
class Param:
    """One header or query parameter: what it means and which values the server takes."""

    description: str
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    format: str | None = None  # "uri": documented for clients; the pattern is what the server checks
    message: str = ""  # what the 422 says is allowed

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.format is not None:
            schema["format"] = self.format
        return schema

    def read(self, where: Where, name: str, values: Mapping[str, str]) -> str | None:
        """The value of ``name`` in ``values`` (headers or query), None when absent; a 422 if it breaks the
        schema."""
        value = values.get(name)
        if value is None:
            return None
        if (self.enum is not None and value not in self.enum) or (
            self.pattern is not None and not re.match(self.pattern, value)
        ):
            allowed = self.message or (f"one of {', '.join(self.enum)}" if self.enum else self.pattern)
            raise invalid(where, name.lower(), f"expected {allowed}", value)
        return value


def invalid(
    where: str, name: str, message: str, value: str, *, code: str | None = None
) -> RequestValidationError:
    """A 422 for one header or query parameter: where it is, what is wrong, what was sent; ``code``: the
    error type of a refusal no schema can express (validation_error otherwise)."""
    return RequestValidationError(
        [{"loc": [where, name], "msg": message, "type": "value_error", "input": value}], code=code
    )


def described(params: Mapping[str, str | Param]) -> dict[str, Param]:
    """Each parameter as a ``Param`` (a bare description: any string)."""
    return {name: p if isinstance(p, Param) else Param(p) for name, p in params.items()}

"""What a route promises, declared on its handler (``@operation(...)``), so the OpenAPI document is built
from the routes themselves: ``server.api.openapi`` walks the app's router and fails the build for a
route without one (a new route cannot go undocumented).

Who may call a route is not declared here but read from ``server.api.auth`` (public paths, session and
token routes), the rules the middleware enforces; a self-authenticating handler names its own scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import BaseModel

from server.api.params import Param

F = TypeVar("F", bound=Callable[..., object])
# The document's security schemes: a key header; a fal app token (query or Bearer); the pages' session
# cookie; a storage upload token; an upload URL's own capability (no credential).
Scheme = Literal["key", "token", "session", "upload_token", "capability"]
# a model (JSON), a content type, a model in another content type (a form), or nothing
# a model (JSON), a media type, a model in another media type, or several media types (JSON's as {})
Body = type[BaseModel] | str | tuple[str, type[BaseModel]] | list[str] | None

_ATTR = "_darkroom_operation"


@dataclass(frozen=True)
class Operation:
    summary: str
    # status -> when; errors answer the envelope unless given as (when, body): fal's cancel, ComfyUI's own
    responses: Mapping[int, str | tuple[str, Body]] = field(default_factory=dict)
    body: Body = None
    ok: Body = None  # the success body (the first 2xx in responses)
    query: Mapping[str, str | Param] = field(default_factory=dict)  # name -> description (any string)
    headers: Mapping[str, str | Param] = field(default_factory=dict)
    # status -> the error types of refusals no schema can express (a LoRA file that is not there, a
    # webhook host that is not allowed): documented on that response, the only refusals of well-formed
    # requests the fuzz drill tolerates
    refusals: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # path parameter -> pattern, where the handler takes less than the route's regex matches
    path: Mapping[str, str] = field(default_factory=dict)
    schemes: tuple[Scheme, ...] | None = None  # self-authenticating handlers: how they check callers
    tag: str = "api"


def operation(summary: str, **details: object) -> Callable[[F], F]:
    """Declare what a handler does, takes and answers (see ``Operation``)."""
    described = Operation(summary, **details)  # type: ignore[arg-type]

    def mark(handler: F) -> F:
        setattr(handler, _ATTR, described)
        return handler

    return mark


def operation_of(handler: object) -> Operation | None:
    return getattr(handler, _ATTR, None)

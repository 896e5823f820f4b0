"""From a request path and a parsed body to an endpoint and its validated request model, or a 422."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from server.errors import NotFoundError, RequestValidationError
from server.workflows.mapping import Endpoint
from server.workflows.request_schema import UNION_TAGS


def find_endpoint(endpoints: dict[str, Endpoint], path: str) -> Endpoint:
    """The endpoint whose app id is the longest prefix of path (fal app ids may carry a subpath)."""
    path = path.strip("/")
    for app_id in sorted(endpoints, key=len, reverse=True):
        if path == app_id or path.startswith(app_id + "/"):
            return endpoints[app_id]
    raise NotFoundError(f"No app {path!r} on this server; available: {', '.join(sorted(endpoints))}")


def validation_error(error: ValidationError) -> RequestValidationError:
    """A 422 in fal's shape; the image_size union's internal tags are not part of the field path."""
    wrapped = RequestValidationError.from_pydantic(error)
    for entry in wrapped.errors:
        entry["loc"] = [part for part in entry["loc"] if part not in UNION_TAGS]
    return wrapped


BOUND_ERRORS = frozenset(
    {"less_than_equal", "greater_than_equal", "less_than", "greater_than", "too_long", "too_short"}
)


def validate_input(endpoint: Endpoint, body: Any) -> Any:
    """The endpoint's validated request model for a parsed JSON body, or a 422 in fal's shape; a value
    past the endpoint's bounds also says why they are set so (``limits_note``, the CPU demos')."""
    try:
        return endpoint.validate(body)
    except ValidationError as e:
        wrapped = validation_error(e)
        if endpoint.limits_note:
            for entry in wrapped.errors:
                if entry.get("type") in BOUND_ERRORS:
                    entry["msg"] = f"{entry['msg']} ({endpoint.app_id}: {endpoint.limits_note})"
        raise wrapped from e

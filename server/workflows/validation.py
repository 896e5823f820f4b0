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


def validate_input(endpoint: Endpoint, body: Any) -> Any:
    """The endpoint's validated request model for a parsed JSON body, or a 422 in fal's shape."""
    try:
        return endpoint.validate(body)
    except ValidationError as e:
        raise validation_error(e) from e

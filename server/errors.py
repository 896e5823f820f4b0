"""Typed errors: each carries an HTTP status and a machine code; app.py's one middleware renders them.

The body is fal's: ``{"detail": <string or pydantic-style list>, "error_type": <code>}`` plus the header
``x-fal-error-type``. Never 408/409 for business errors: fal's Python client retries those ten times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# An absolute path to a model file: where it lives is this server's business, its name is not.
_MODEL_PATH = re.compile(
    r"(?<![\w.:/])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+\.(?:safetensors|sft|ckpt|pt|pth|bin|gguf))"
)


def public_message(message: str) -> str:
    """A worker's error message fit for clients: model files by name, not by their path on this server
    (the worker's own log keeps the full message)."""
    return _MODEL_PATH.sub(r"\1", message)


def relative_paths(detail: Any, folders: Sequence[Path]) -> Any:
    """An error's detail (a message, or pydantic-style entries) with paths inside ``folders`` written
    relative to them: a client learns which file, not where this server keeps it."""
    if isinstance(detail, str):
        for folder in folders:  # the folder itself, not a longer name that starts like it
            pattern = re.escape(str(folder).rstrip("/")) + r"(/|(?![\w.-]))"
            detail = re.sub(pattern, lambda m: "" if m[1] == "/" else ".", detail)
        return detail
    if isinstance(detail, list):
        return [{**e, "msg": relative_paths(e["msg"], folders)} if isinstance(e, dict) and "msg" in e else e
                for e in detail]  # fmt: skip
    return detail


# What a request cancelled by its client reports (499, error_type "request_cancelled").
CANCELLED_DETAIL = "Request cancelled by the client."


class DarkroomError(Exception):
    """Base of every error the facade turns into an HTTP response."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def detail(self) -> str | list[dict[str, Any]]:
        """What goes under "detail" in the response body."""
        return self.message


class RequestValidationError(DarkroomError):
    """The request body is invalid (422), with pydantic-v2-style entries under "detail"."""

    status = 422
    code = "validation_error"

    def __init__(
        self, errors: Sequence[Mapping[str, Any]], message: str = "", *, code: str | None = None
    ) -> None:
        self.errors = [dict(e) for e in errors]
        first = self.errors[0]["msg"] if self.errors else "invalid request"
        # ``code``: a well-formed value refused for what it names (a webhook host that is not allowed)
        super().__init__(message or f"Request failed validation: {first}", code=code)

    @property
    def detail(self) -> list[dict[str, Any]]:
        return self.errors

    @classmethod
    def from_pydantic(cls, exc: Any, *, loc_prefix: str = "body") -> RequestValidationError:
        """Wrap a ``pydantic.ValidationError``; locations get the ``body`` prefix fal uses."""
        entries: list[dict[str, Any]] = []
        for err in exc.errors(include_url=False):
            entry: dict[str, Any] = {
                "loc": [loc_prefix, *err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", "value_error"),
            }
            if err.get("ctx"):
                entry["ctx"] = {k: _json_safe(v) for k, v in err["ctx"].items()}
            if "input" in err:
                entry["input"] = _json_safe(err["input"])
            entries.append(entry)
        return cls(entries)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


class NotFoundError(DarkroomError):
    """A named thing (request id, file, app id) does not exist."""

    status = 404
    code = "not_found"


class ModelsMissingError(DarkroomError):
    """The model files an endpoint needs are not installed."""

    status = 503
    code = "models_missing"


class NodePacksMissingError(DarkroomError):
    """A published workflow needs a node pack that is removed, failed or still being installed."""

    status = 503
    code = "node_packs_missing"


class StoreUnavailableError(DarkroomError):
    """The job store (a fleet's database) refused, failed or did not answer in time."""

    status = 503
    code = "store_unavailable"


class WorkerUnavailableError(DarkroomError):
    """No ComfyUI worker could take the request (none ready in time, or shutting down)."""

    status = 503
    code = "runner_scheduling_failure"


class WorkerConnectionError(DarkroomError):
    """A worker could not be reached, or its connection dropped mid-request."""

    status = 503
    code = "runner_disconnected"


class WorkerResponseError(DarkroomError):
    """A worker answered with something the client did not expect (status or body)."""

    status = 502
    code = "worker_error"


class WorkerStartError(DarkroomError):
    """A worker process did not become ready; the message carries its last log lines."""

    status = 503
    code = "startup_timeout"

    def __init__(self, message: str, *, worker_id: int, log_tail: Sequence[str] = ()) -> None:
        self.worker_id = worker_id
        self.log_tail = list(log_tail)
        tail = "\n".join(f"    {line}" for line in self.log_tail)
        super().__init__(f"{message}\n  last log lines of worker {worker_id}:\n{tail}" if tail else message)


class RunTimeoutError(DarkroomError):
    """A run went past its run limit (``run_timeout_s``); it was interrupted on its worker."""

    status = 504
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"X-Fal-Request-Timeout-Type": "server"})


class StartTimeoutError(DarkroomError):
    """A request did not start on a worker (its first event) before its X-Fal-Request-Timeout."""

    status = 504
    code = "request_timeout"

    def __init__(self) -> None:
        super().__init__(
            "Request timed out: it did not start before its X-Fal-Request-Timeout deadline",
            headers={"X-Fal-Request-Timeout-Type": "user"},
        )


class ConfigError(DarkroomError):
    """The settings cannot work on this machine (e.g. device=cuda without a GPU)."""

    status = 500
    code = "configuration_error"


class GenerationError(DarkroomError):
    """A generation failed inside ComfyUI (node raised, output missing)."""

    status = 500
    code = "generation_error"


@dataclass(frozen=True)
class NodeInputError:
    """One reason ComfyUI rejected a prompt, located at a node (and usually an input)."""

    node_id: str
    class_type: str
    input_name: str | None
    type: str
    message: str
    details: str

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input_name:
            where += f" input {self.input_name!r}"
        return f"{where}: {self.message}" + (f" [{self.details}]" if self.details else "")


class ComfyValidationError(DarkroomError):
    """ComfyUI rejected a prompt at POST /prompt (HTTP 400): our workflow or its inputs are wrong.

    500 by default: the facade builds the graph, so a rejection is our bug or missing models;
    endpoint code may re-raise it as a RequestValidationError or ModelsMissingError.
    """

    status = 500
    code = "workflow_validation_error"

    def __init__(
        self, error_type: str, error_message: str, node_errors: Sequence[NodeInputError] = ()
    ) -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.node_errors = list(node_errors)
        reasons = "; ".join(str(e) for e in self.node_errors)
        super().__init__(
            f"ComfyUI rejected the prompt: {error_message}" + (f": {reasons}" if reasons else "")
        )

    @property
    def first(self) -> NodeInputError | None:
        return self.node_errors[0] if self.node_errors else None

    @property
    def node_id(self) -> str | None:
        return self.first.node_id if self.first else None

    @property
    def class_type(self) -> str | None:
        return self.first.class_type if self.first else None

    @property
    def input_name(self) -> str | None:
        return self.first.input_name if self.first else None

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> ComfyValidationError:
        """Parse ComfyUI's 400 body ``{error:{type,message,details}, node_errors:{id:{...}}}``."""
        error = body.get("error")
        error = error if isinstance(error, Mapping) else {"type": "unknown", "message": str(error)}
        found: list[NodeInputError] = []
        node_errors = body.get("node_errors")
        for node_id, node in (node_errors if isinstance(node_errors, Mapping) else {}).items():
            class_type = str(node.get("class_type", "?"))
            for reason in node.get("errors", []):
                extra = reason.get("extra_info") or {}
                input_name = extra.get("input_name") if isinstance(extra, Mapping) else None
                found.append(
                    NodeInputError(
                        node_id=str(node_id),
                        class_type=class_type,
                        input_name=str(input_name) if input_name is not None else None,
                        type=str(reason.get("type", "")),
                        message=str(reason.get("message", "")),
                        details=str(reason.get("details", "")),
                    )
                )
        message = str(error.get("message", "invalid prompt"))
        details = str(error.get("details") or "")
        if not found and details:
            message = f"{message} ({details})"
        return cls(str(error.get("type", "unknown")), message, found)


class AuthError(DarkroomError):
    """The request carries no API key, or one this server does not know (401)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Key realm="darkroom"'})


class ForbiddenError(DarkroomError):
    """Valid credentials that do not reach this: a token for other apps, another user's request (403)."""

    status = 403
    code = "forbidden"


class InputError(DarkroomError):
    """A file the request names (image_url, an upload) cannot be used: bad URL, too large, unreadable."""

    status = 422
    code = "input_error"


class BlockedAddressError(InputError):
    """A URL points at an address the outbound policy refuses (loopback, private, metadata...)."""

    code = "address_not_allowed"

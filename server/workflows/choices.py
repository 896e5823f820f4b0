"""Sampler and scheduler names are whatever the running ComfyUI knows: read from /object_info, once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.engine.client import ComfyClient
from server.errors import RequestValidationError, WorkerConnectionError, WorkerResponseError
from server.workflows.mapping import Endpoint
from server.workflows.request_schema import DEFAULT

# Which list of KSampler's inputs each field type is checked against.
_LISTS = {"sampler": "sampler_name", "scheduler": "scheduler"}
FIELD_TYPES = tuple(_LISTS)


class ComfyChoices:
    """Validates sampler/scheduler fields against the worker's own lists (422 listing the allowed)."""

    def __init__(self) -> None:
        self._lists: dict[str, list[str]] | None = None

    async def check(self, endpoint: Endpoint, request: BaseModel, client: ComfyClient) -> None:
        if self._asked(endpoint, request):
            self._check(endpoint, request, await self.lists(client))

    def check_known(self, endpoint: Endpoint, request: BaseModel) -> None:
        """``check`` without asking a worker: once the lists are known (a queue submit is refused then,
        as the document's enum says, not when it runs)."""
        if self._lists is not None and self._asked(endpoint, request):
            self._check(endpoint, request, self._lists)

    @staticmethod
    def _asked(endpoint: Endpoint, request: BaseModel) -> dict[str, Any]:
        fields = endpoint.params_of(*_LISTS)
        return {name: getattr(request, name) for name in fields if getattr(request, name) != DEFAULT}

    def _check(self, endpoint: Endpoint, request: BaseModel, lists: dict[str, list[str]]) -> None:
        fields = {name: endpoint.params[name].type for name in endpoint.params_of(*_LISTS)}
        asked = self._asked(endpoint, request)
        problems = []
        for name, value in asked.items():
            allowed = lists[fields[name]]
            if value not in allowed:
                problems.append({
                    "loc": ["body", name],
                    "msg": f"Input should be {DEFAULT!r} or one of ComfyUI's: {', '.join(allowed)}",
                    "type": "literal_error",
                    "ctx": {"expected": [DEFAULT, *allowed]},
                    "input": value,
                })  # fmt: skip
        if problems:
            raise RequestValidationError(problems)

    async def lists(self, client: ComfyClient) -> dict[str, list[str]]:
        if self._lists is None:
            info: dict[str, Any] = await client.object_info("KSampler")
            required = info["KSampler"]["input"]["required"]
            self._lists = {kind: list(required[input_name][0]) for kind, input_name in _LISTS.items()}
        return self._lists

    async def lists_if_known(self, client: ComfyClient | None) -> dict[str, list[str]] | None:
        """The lists, asking ``client`` (any ready worker; a cheap read) if not yet known; None when
        no worker can say (none ready yet)."""
        if self._lists is None and client is not None:
            try:
                await self.lists(client)
            except (WorkerConnectionError, WorkerResponseError):
                return None
        return self._lists

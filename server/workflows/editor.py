"""Runs from the browser editor as a darkroom endpoint, so they wait in darkroom's queue beside API
requests (never interrupting, reordering or sharing a prompt with them), show in its status and logs,
and are cancelled one by one. ``darkroom/editor`` takes the editor's whole API-format prompt and its
WebSocket client id; it runs on the editor's worker, which sends the run's events to the editor itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.workflows.mapping import Endpoint, OutputSpec

EDITOR_APP = "darkroom/editor"
# The worker the editor's page, API calls and socket are proxied to: its files (uploads, outputs the
# editor shows) live there, so its runs go there too.
EDITOR_WORKER = 0


class EditorRun(BaseModel):
    """What the editor's ``POST /prompt`` carries (the rest of what its frontend sends is not used)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    prompt: dict[str, Any] = Field(min_length=1, description="The API-format prompt")
    client_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    extra_data: dict[str, Any] = Field(
        default_factory=dict, description="ComfyUI's extra_data (the UI workflow)"
    )


def editor_endpoint() -> Endpoint:
    return Endpoint(
        app_id=EDITOR_APP, workflow={}, params={}, models={}, fixed={}, lookups={}, output=OutputSpec(),
        request_model=EditorRun, raw=True,
    )  # fmt: skip

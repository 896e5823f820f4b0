"""Typed events from a ComfyUI worker's WebSocket, and the pure parsers that build them.

JSON frames are ``{"type", "data"}``; binary frames are a 4-byte big-endian type, then a payload
(type 1: 4-byte image format then the image; type 4: 4-byte header length, a JSON header naming the
prompt and node, then the image; type 4 is sent to clients that announce supports_preview_metadata).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Binary frame types (ComfyUI protocol.py); type 2 (unencoded) is re-encoded as 1 before sending.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_PREVIEW_FORMATS = {1: "jpeg", 2: "png"}


@dataclass(frozen=True)
class Started:
    prompt_id: str


@dataclass(frozen=True)
class Cached:
    """Nodes whose outputs came from the cache; they get no Executing event."""

    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Executing:
    """A node started; ``node is None`` means the prompt is finished and its history is written."""

    prompt_id: str
    node: str | None


@dataclass(frozen=True)
class Progress:
    prompt_id: str
    node: str | None
    value: float
    max: float


@dataclass(frozen=True)
class OutputFile:
    """A file a node wrote; fetch it with ``ComfyClient.fetch_output(**dataclasses.asdict(f))``."""

    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class Executed:
    """An output node finished; ``output`` is its UI dict, e.g. ``{"images": [...]}``."""

    prompt_id: str
    node: str
    output: dict[str, Any]

    @property
    def files(self) -> list[OutputFile]:
        """Every file-like entry (images, gifs, audio...) the node reported."""
        found: list[OutputFile] = []
        for entries in self.output.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, Mapping) and "filename" in entry:
                    found.append(
                        OutputFile(
                            str(entry["filename"]),
                            str(entry.get("subfolder", "")),
                            str(entry.get("type", "output")),
                        )
                    )
        return found


@dataclass(frozen=True)
class Evaluations:
    """One sampling run's diffusion-model evaluations (darkroom's node pack counts them with a forward
    hook; ``custom_nodes/darkroom/ops/evaluations.py``): sampler model calls that ran the model, and
    those a step cache (``cache``: EasyCache, LazyCache, or None) answered instead."""

    prompt_id: str
    node: str | None
    evaluated: int
    reused: int
    cache: str | None


@dataclass(frozen=True)
class Loss:
    """One training step's loss (darkroom's node pack reports it right before ComfyUI's progress message
    of the same step; ``custom_nodes/darkroom/ops/train_progress.py``); None if it was not finite."""

    prompt_id: str
    node: str | None
    step: int
    total: int
    loss: float | None


@dataclass(frozen=True)
class Success:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionError:
    prompt_id: str
    node_id: str
    node_type: str
    message: str
    exception_type: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None


@dataclass(frozen=True)
class Removed:
    """The prompt left the queue without running (POST /queue delete)."""

    prompt_id: str


@dataclass(frozen=True)
class Preview:
    """A preview image from a binary frame; type 1 frames carry no prompt or node id."""

    image: bytes = field(repr=False)
    format: str
    prompt_id: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class Status:
    """Queue size changed (not prompt-specific; used to notice a deleted pending prompt)."""

    queue_remaining: int


@dataclass(frozen=True)
class WorkerLost:
    """The prompt's worker went away mid-run and the facade runs it again (made by the facade, not by
    ComfyUI: see ``generate.WORKER_ATTEMPTS``)."""

    prompt_id: str
    reason: str


@dataclass(frozen=True)
class Note:
    """A line for the request's status logs, made by the facade (e.g. what the safety checker did)."""

    prompt_id: str
    message: str
    level: str = "INFO"


Event = (
    Started
    | Cached
    | Executing
    | Progress
    | Executed
    | Evaluations
    | Loss
    | Success
    | ExecutionError
    | Interrupted
    | Removed
    | Preview
    | WorkerLost
    | Note
)
TERMINAL = (Success, ExecutionError, Interrupted, Removed)


def is_terminal(event: Event) -> bool:
    """True for the last event of a prompt."""
    return isinstance(event, TERMINAL) or (isinstance(event, Executing) and event.node is None)


def parse_message(message: Mapping[str, Any]) -> Event | Status | None:
    """One JSON frame ``{"type", "data"}`` to a typed event; None for types we do not use."""
    kind, data = message.get("type"), message.get("data")
    if not isinstance(data, Mapping):
        return None
    pid = str(data.get("prompt_id", ""))
    if kind == "executing":
        node = data.get("node")
        return Executing(pid, None if node is None else str(node))
    if kind == "progress":
        node = data.get("node")
        return Progress(pid, None if node is None else str(node), float(data["value"]), float(data["max"]))
    if kind == "executed":
        return Executed(pid, str(data["node"]), dict(data.get("output") or {}))
    if kind == "darkroom.evaluations":
        node, cache = data.get("node"), data.get("cache")
        return Evaluations(
            pid,
            None if node is None else str(node),
            int(data["evaluated"]),
            int(data["reused"]),
            None if cache is None else str(cache),
        )
    if kind == "darkroom.loss":
        node, loss = data.get("node"), data.get("loss")
        return Loss(
            pid, None if node is None else str(node), int(data["step"]), int(data["total"]),
            None if loss is None else float(loss),
        )  # fmt: skip
    if kind == "execution_start":
        return Started(pid)
    if kind == "execution_cached":
        return Cached(pid, tuple(str(n) for n in data.get("nodes", ())))
    if kind == "execution_success":
        return Success(pid)
    if kind == "execution_error":
        return ExecutionError(
            pid,
            str(data.get("node_id", "")),
            str(data.get("node_type", "")),
            str(data.get("exception_message", "")).strip(),
            str(data.get("exception_type", "")),
            tuple(str(line) for line in data.get("traceback", ())),
        )
    if kind == "execution_interrupted":
        node_id, node_type = data.get("node_id"), data.get("node_type")
        return Interrupted(
            pid, None if node_id is None else str(node_id), None if node_type is None else str(node_type)
        )
    if kind == "status":
        info = data.get("status") or {}
        return Status(int(info.get("exec_info", {}).get("queue_remaining", 0)))
    return None


def parse_binary(frame: bytes) -> Preview | None:
    """A binary frame (4-byte big-endian type, then payload) to a Preview; None for other types."""
    if len(frame) < 8:
        return None
    (kind,) = struct.unpack(">I", frame[:4])
    if kind == PREVIEW_IMAGE:
        (fmt,) = struct.unpack(">I", frame[4:8])
        return Preview(bytes(frame[8:]), _PREVIEW_FORMATS.get(fmt, "jpeg"))
    if kind == PREVIEW_IMAGE_WITH_METADATA:
        (size,) = struct.unpack(">I", frame[4:8])
        meta = json.loads(frame[8 : 8 + size])
        mime = str(meta.get("image_type", "image/jpeg"))
        node = meta.get("node_id")
        return Preview(
            bytes(frame[8 + size :]),
            mime.rsplit("/", 1)[-1],
            str(meta.get("prompt_id") or "") or None,
            None if node is None else str(node),
        )
    return None

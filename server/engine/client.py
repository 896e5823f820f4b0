"""HTTP + WebSocket client for one ComfyUI worker.

The facade never imports ComfyUI: this module is the whole contract. ``run()`` connects the socket
before submitting (ComfyUI sends a prompt's events only to the socket named by its client_id, and
only while it is connected), then yields that prompt's events until it succeeds, fails, is
interrupted or is removed from the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from server.engine.events import (
    TERMINAL,
    Cached,
    Evaluations,
    Event,
    Executed,
    Executing,
    ExecutionError,
    Interrupted,
    Loss,
    Note,
    OutputFile,
    Preview,
    Progress,
    Removed,
    Started,
    Status,
    Success,
    WorkerLost,
    is_terminal,
    parse_binary,
    parse_message,
)
from server.errors import ComfyValidationError, WorkerConnectionError, WorkerResponseError

__all__ = [
    "TERMINAL", "Cached", "ComfyClient", "Evaluations", "Event", "Executed", "Executing", "ExecutionError",
    "Interrupted", "Loss", "Note", "OutputFile", "Preview", "Progress", "Removed", "Started", "Status",
    "Success", "Watcher", "WorkerLost", "is_terminal",
    "parse_binary", "parse_message",
]  # fmt: skip

logger = logging.getLogger(__name__)

ABANDON_WAIT_S = 30.0  # default: how long a cancelled prompt may take to leave its worker


class ComfyClient:
    """Talks to one ComfyUI worker at ``base_url`` through a shared aiohttp session."""

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, *, request_timeout_s: float = 30.0,
        abandon_wait_s: float = ABANDON_WAIT_S,
    ) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.request_timeout_s = request_timeout_s
        self.abandon_wait_s = abandon_wait_s
        # A cancelled prompt still running abandon_wait_s after its interrupt (a node that never
        # checks for one, e.g. a text encoder on a huge prompt): its worker must be restarted.
        self.stuck_prompt: str | None = None

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.request_timeout_s)
        try:
            async with self.session.request(
                method, self.base_url + path, json=json_body, params=params, timeout=timeout
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise WorkerConnectionError(
                f"ComfyUI worker {self.base_url}: {method} {path} failed: {type(e).__name__}: {e}"
            ) from e

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self._send(method, path, **kwargs)
        if status != 200:
            raise _unexpected(self.base_url, method, path, status, body)
        return json.loads(body) if body else None

    async def submit(
        self,
        prompt: Mapping[str, Any],
        *,
        prompt_id: str,
        client_id: str,
        extra_data: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue ``prompt`` (POST /prompt); ComfyUI's 400 becomes ComfyValidationError."""
        payload: dict[str, Any] = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        status, body = await self._send("POST", "/prompt", json_body=payload)
        if status == 400:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, Mapping) and "error" in parsed:
                raise ComfyValidationError.from_response(parsed)
        if status != 200:
            raise _unexpected(self.base_url, "POST", "/prompt", status, body)
        node_errors = json.loads(body).get("node_errors")
        if node_errors:  # some outputs failed validation; the rest run
            logger.warning(
                "prompt %s: ComfyUI skips outputs that failed validation: %s", prompt_id, node_errors
            )

    def watch(self, client_id: str | None = None, *, previews_with_metadata: bool = True) -> Watcher:
        """An ``async with`` WebSocket follower for ``client_id``; connect it before submitting."""
        return Watcher(self, client_id or uuid.uuid4().hex, previews_with_metadata=previews_with_metadata)

    async def run(
        self, prompt: Mapping[str, Any], *, prompt_id: str | None = None, client_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Submit ``prompt`` and yield its events; the last one is terminal (see ``is_terminal``).

        If the caller stops listening before the end (cancelled, or the socket dropped), the prompt
        is cancelled on the worker, so a worker never runs a prompt nobody waits for.
        """
        prompt_id = prompt_id or uuid.uuid4().hex
        finished = False
        async with self.watch(client_id) as watcher:
            await self.submit(prompt, prompt_id=prompt_id, client_id=watcher.client_id)
            try:
                async for event in watcher.events(prompt_id):
                    finished = is_terminal(event)
                    yield event
            finally:
                if not finished:
                    await self._abandon(prompt_id)

    async def cancel(self, prompt_id: str) -> None:
        """Remove ``prompt_id`` if it is pending, interrupt it if it is running."""
        await self.delete_pending([prompt_id])
        await self.interrupt(prompt_id)

    async def _abandon(self, prompt_id: str) -> None:
        """Cancel the prompt and wait (``abandon_wait_s`` at most) until the worker has let go of it:
        an interrupt takes effect at the next step, and a prompt still running would make the next
        borrower's prompt wait behind it (and count against that one's run limit); past the wait it
        is marked ``stuck_prompt``, and the supervisor restarts the worker before lending it again."""
        try:
            await self.cancel(prompt_id)
            deadline = time.monotonic() + self.abandon_wait_s
            while prompt_id in [p for ids in await self.queue() for p in ids]:
                if time.monotonic() > deadline:
                    self.stuck_prompt = prompt_id
                    break
                await asyncio.sleep(0.1)
        except (WorkerConnectionError, WorkerResponseError) as e:
            logger.debug("could not cancel abandoned prompt %s on %s: %s", prompt_id, self.base_url, e)

    async def fetch_output(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        """Bytes of a file a node wrote (GET /view)."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        status, body = await self._send(
            "GET", "/view", params=params, timeout_s=max(self.request_timeout_s, 300.0)
        )
        if status != 200:
            raise _unexpected(
                self.base_url, "GET", f"/view?filename={filename}&subfolder={subfolder}", status, body
            )
        return body

    async def upload_input(self, data: bytes, name: str, *, subfolder: str = "darkroom") -> str:
        """Put an input image in the worker's input folder; returns the name LoadImage takes."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name)
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        try:
            async with self.session.post(self.base_url + "/upload/image", data=form, timeout=timeout) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise WorkerConnectionError(
                f"ComfyUI worker {self.base_url}: uploading {name} failed: {e}"
            ) from e
        if status != 200:
            raise _unexpected(self.base_url, "POST", "/upload/image", status, body)
        saved = json.loads(body)
        return f"{saved['subfolder']}/{saved['name']}" if saved.get("subfolder") else str(saved["name"])

    async def interrupt(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` if it is the one running (POST /interrupt); a no-op otherwise."""
        await self._json("POST", "/interrupt", json_body={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_ids: Iterable[str]) -> None:
        """Remove not-yet-started prompts from the queue (POST /queue {delete})."""
        await self._json("POST", "/queue", json_body={"delete": list(prompt_ids)})

    async def queue(self) -> tuple[list[str], list[str]]:
        """Ids of the running and the pending prompts (GET /queue)."""
        data = await self._json("GET", "/queue")
        return [str(item[1]) for item in data["queue_running"]], [
            str(item[1]) for item in data["queue_pending"]
        ]

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """Node definitions (GET /object_info[/class])."""
        path = "/object_info" + (f"/{node_class}" if node_class else "")
        result: dict[str, Any] = await self._json("GET", path, timeout_s=max(self.request_timeout_s, 120.0))
        return result

    async def system_stats(self) -> dict[str, Any]:
        """Versions, RAM and devices (GET /system_stats); answers as soon as the worker is up."""
        result: dict[str, Any] = await self._json("GET", "/system_stats")
        return result

    async def loaded_models(self) -> list[dict[str, Any]]:
        """The models this worker keeps loaded (GET /darkroom/loaded, the node pack's route): kind, files,
        class, device, bytes on the device and in all."""
        data = await self._json("GET", "/darkroom/loaded")
        return list(data["models"]) if isinstance(data, Mapping) else []

    async def declared_pack_nodes(self) -> dict[str, list[str]]:
        """The node ids each installed third-party pack declares (GET /darkroom/packs, the node pack's
        route), by the pack's folder name."""
        data = await self._json("GET", "/darkroom/packs")
        return dict(data["packs"]) if isinstance(data, Mapping) else {}

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry (outputs, status), or None if unknown."""
        data = await self._json("GET", f"/history/{prompt_id}")
        entry = data.get(prompt_id) if isinstance(data, Mapping) else None
        return dict(entry) if isinstance(entry, Mapping) else None


class Watcher:
    """One WebSocket to a worker under one client_id; yields typed events for one prompt at a time."""

    def __init__(self, client: ComfyClient, client_id: str, *, previews_with_metadata: bool = True) -> None:
        self.client = client
        self.client_id = client_id
        self.previews_with_metadata = previews_with_metadata
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: deque[aiohttp.WSMessage] = deque()

    async def __aenter__(self) -> Watcher:
        url = f"{self.client.base_url}/ws"
        try:
            self._ws = await self.client.session.ws_connect(
                url,
                params={"clientId": self.client_id},
                heartbeat=30.0,
                max_msg_size=64 * 2**20,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
            if self.previews_with_metadata:
                await self._negotiate()
        except (aiohttp.ClientError, TimeoutError) as e:
            await self.close()
            raise WorkerConnectionError(
                f"ComfyUI worker {self.client.base_url}: WebSocket failed: {e}"
            ) from e
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    async def _negotiate(self) -> None:
        """Announce preview metadata support and wait for the reply, so the flag is set before submit."""
        assert self._ws is not None
        await self._ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        try:
            async with asyncio.timeout(10.0):
                while True:
                    msg = await self._ws.receive()
                    if (
                        msg.type is aiohttp.WSMsgType.TEXT
                        and json.loads(msg.data).get("type") == "feature_flags"
                    ):
                        return
                    self._pending.append(msg)
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        return
        except TimeoutError:
            logger.debug(
                "worker %s did not answer feature_flags; previews come without metadata", self.client.base_url
            )

    async def _receive(self) -> aiohttp.WSMessage:
        if self._pending:
            return self._pending.popleft()
        if self._ws is None:
            raise RuntimeError("Watcher used outside 'async with'")
        return await self._ws.receive()

    async def events(self, prompt_id: str) -> AsyncIterator[Event]:
        """Yield ``prompt_id``'s events until a terminal one; call after submitting it."""
        started = False
        queue_size: int | None = None  # the last Status seen; only a shrinking queue can mean removal
        while True:
            msg = await self._receive()
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raise WorkerConnectionError(
                    f"ComfyUI worker {self.client.base_url}: WebSocket closed ({msg.type.name}) while "
                    f"prompt {prompt_id} was {'running' if started else 'queued'}"
                )
            try:
                is_text = msg.type is aiohttp.WSMsgType.TEXT
                parsed = parse_message(json.loads(msg.data)) if is_text else parse_binary(msg.data)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                logger.warning("worker %s: unreadable WebSocket frame skipped (%s)", self.client.base_url, e)
                continue
            if isinstance(parsed, Status):
                shrank = queue_size is not None and parsed.queue_remaining < queue_size
                queue_size = parsed.queue_remaining
                if shrank and not started and await self._was_removed(prompt_id):
                    yield Removed(prompt_id)
                    return
                continue
            if parsed is None:
                continue
            if isinstance(parsed, Preview) and parsed.prompt_id is None:
                if started:
                    yield parsed
                continue
            if parsed.prompt_id != prompt_id:
                continue
            started = True
            yield parsed
            if is_terminal(parsed):
                return

    async def _was_removed(self, prompt_id: str) -> bool:
        running, pending = await self.client.queue()
        if prompt_id in running or prompt_id in pending:
            return False
        return await self.client.history(prompt_id) is None


def _unexpected(base_url: str, method: str, path: str, status: int, body: bytes) -> WorkerResponseError:
    snippet = body[:300].decode("utf-8", "replace")
    return WorkerResponseError(f"ComfyUI worker {base_url}: {method} {path} answered {status}: {snippet}")

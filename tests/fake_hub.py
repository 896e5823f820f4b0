"""A loopback stand-in for the Hugging Face hub's file endpoints, as ``huggingface_hub`` reads them.

``HEAD|GET /{owner}/{repo}/resolve/{revision}/{path}`` answers like the hub for an LFS file: a 302
whose ``Location`` is a CDN URL (here ``/cdn/{id}`` on the same server) with ``X-Repo-Commit``,
``X-Linked-Etag`` (the LFS sha256) and ``X-Linked-Size``; errors carry the hub's ``X-Error-Code``
(``GatedRepo`` 401 without the token, ``RepoNotFound`` 401, ``RevisionNotFound`` and
``EntryNotFound`` 404). ``GET /cdn/{id}`` serves the bytes with ``Range`` support, and can drop the
connection part-way or trickle. Every request is recorded, with the bytes each GET sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class HubFile:
    content: bytes
    advertised_sha256: str = ""  # X-Linked-Etag; default the content's real sha256
    gated_token: str = ""  # non-empty: a 401 GatedRepo unless "Authorization: Bearer <token>"

    def __post_init__(self) -> None:
        self.advertised_sha256 = self.advertised_sha256 or hashlib.sha256(self.content).hexdigest()


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    sent_bytes: int = 0


@dataclass
class FakeHub:
    url: str = ""
    # (owner/repo, commit, path in repo) -> file; "main" in refs resolves to a commit
    files: dict[tuple[str, str, str], HubFile] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    drop_first_get_after: int | None = None  # close the connection after this many bytes, once
    chunk_delay_s: float = 0.0  # between 64 KiB chunks: a slow link, so progress can be seen
    requests: list[Served] = field(default_factory=list)

    def add(self, repo: str, commit: str, path: str, hub_file: HubFile) -> str:
        """Add a file; its ``hf`` source string pinned to ``commit``."""
        self.files[(repo, commit, path)] = hub_file
        return f"{repo}/{path}@{commit}"

    def gets(self) -> list[Served]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith("/cdn/")]


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub
    cdn: dict[str, HubFile]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        served = Served(self.command, self.path, self.headers.get("Range"))
        self.hub.requests.append(served)
        if self.path.startswith("/cdn/"):
            return self._cdn(served, head)
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path)
        if match is None:
            return self._error(404, "EntryNotFound", "no such route")
        repo, revision, path = match.groups()
        commit = self.hub.refs.get(revision, revision)
        if not any(r == repo for r, _, _ in self.hub.files):
            return self._error(401, "RepoNotFound", "Repository Not Found for url")
        if not any(r == repo and c == commit for r, c, _ in self.hub.files):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        hub_file = self.hub.files.get((repo, commit, path))
        if hub_file is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", commit)
        if hub_file.gated_token and self.headers.get("Authorization") != f"Bearer {hub_file.gated_token}":
            return self._error(
                401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it."
            )
        key = f"{hub_file.advertised_sha256}-{len(self.cdn)}"
        self.cdn[key] = hub_file
        self.send_response(302)
        self.send_header("Location", f"{self.hub.url}/cdn/{key}")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("X-Linked-Etag", f'"{hub_file.advertised_sha256}"')
        self.send_header("X-Linked-Size", str(len(hub_file.content)))
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')  # the git pointer's
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cdn(self, served: Served, head: bool) -> None:
        hub_file = self.cdn.get(self.path.removeprefix("/cdn/"))
        if hub_file is None:
            return self._error(404, "EntryNotFound", "expired")
        match = _RANGE.match(self.headers.get("Range") or "")
        start = int(match[1]) if match else 0
        body = hub_file.content[start:]
        self.send_response(206 if match else 200)
        if match:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(hub_file.content) - 1}/{len(hub_file.content)}"
            )
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        limit = len(body)
        if self.hub.drop_first_get_after is not None:
            limit, self.hub.drop_first_get_after = self.hub.drop_first_get_after, None
        for offset in range(0, limit, 1 << 16):
            chunk = body[offset : min(offset + (1 << 16), limit)]
            self.wfile.write(chunk)
            served.sent_bytes += len(chunk)
            if self.hub.chunk_delay_s:
                self.wfile.flush()
                time.sleep(self.hub.chunk_delay_s)
        if limit < len(body):  # a dropped connection: what was promised does not arrive
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def running_hub() -> Iterator[FakeHub]:
    """A fake hub on a free loopback port, stopped at the end."""
    hub = FakeHub()
    handler = type("Handler", (_Handler,), {"hub": hub, "cdn": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

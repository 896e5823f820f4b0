"""The log scan after the suite (tests/conftest.py runs it at session end; it fails the run): no API key
and no raw control character a request sent may reach a log.

Two sources, both real:
- every ``darkroom serve`` a test starts (``tests/serve_process.py``): its log file, written by the real
  CLI's formatter, is scanned when the process stops (before a temporary folder takes it away) for the
  keys it was started with, raw control characters, and lines a request forged (a line no record began
  that carries a hostile request's ``FORGED`` marker);
- every record the in-process apps log (loggers ``server.*`` and ``darkroom.*``), formatted as
  ``darkroom serve`` formats them, for the keys the suite's apps were configured with (``register``) and
  anything shaped like a credential (``Key <secret>``, ``Bearer <secret>``, ``?key=<secret>``).
The drills (separate processes) scan their own servers' logs the same way (scripts/drill_serve.py).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from server.security.untrusted import LogFormatter

FORGED = "FORGED"  # what hostile test requests put after a newline, to find a forged line by
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"  # server/cli.py's
_CREDENTIAL = re.compile(
    r"\b(?:Key|Bearer) (?!<|realm)[\w:.\-]{8,}|[?&](?:key|token|auth)=(?!\*\*\*)[^&\s\"]{8,}"
)

secrets: set[str] = set()
findings: list[str] = []


def register(*values: str) -> None:
    """Secrets (API keys) that must never be logged; short ones are ignored (they match by chance)."""
    secrets.update(v.strip() for v in values if len(v.strip()) >= 8)


def scan_serve_log(path: Path, keys: list[str], unframed: list[str], controls: int) -> None:
    """One stopped ``darkroom serve``'s log (``ServeProcess.log_scan`` read it)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    leaked = [key for key in keys if key and key in text]
    if leaked:
        findings.append(f"{path}: an API key is in the log")
    if controls:
        findings.append(f"{path}: {controls} raw control character(s)")
    forged = [line for line in unframed if FORGED in line]
    if forged:
        findings.append(f"{path}: forged log line(s): {forged[:3]}")


class Collector(logging.Handler):
    """Keeps what the in-process apps log that a scan must not find (formatted as the CLI would)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(LogFormatter(FORMAT))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # A worker's own output (ComfyUI's lines, "[worker N] ...") never holds a request's credentials,
        # and its words ("Key mismatch in ...") could look like one.
        if record.name.startswith(("server", "darkroom")) and not str(record.msg).startswith("[worker"):
            self.texts.append(self.format(record))

    def scan(self) -> None:
        for text in self.texts:
            shown = [s for s in secrets if s in text]
            if shown or _CREDENTIAL.search(text):
                findings.append(f"a credential in an in-process log record: {text[:300]!r}")

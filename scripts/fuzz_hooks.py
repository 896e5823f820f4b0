"""schemathesis hooks for the fuzz drill (``scripts/drill_fuzz.py`` loads them through SCHEMATHESIS_HOOKS).

- Declared refusals: a schema cannot say whether a LoRA file exists or a webhook host is allowed, so a
  well-formed request may rightly be refused. Such a refusal is tolerated (dropped as a "valid data
  rejected" failure) only when the document declares it: the response's status lists, under
  ``x-darkroom-refusals``, the error type the body carries (``error_type``; fal's cancel: ``status``;
  a HEAD's answer, without a body: its ``x-fal-error-type`` header).
  The one 5xx so declared is fal's 504 request_timeout for a start deadline the client itself set
  (X-Fal-Request-Timeout, answered with X-Fal-Request-Timeout-Type: user) that the worker, busy with
  other requests, could not meet; a run past the server's own limit stays a failure. Every other
  failure of every check stands. Each tolerated refusal is counted, by error type, in the file
  DARKROOM_FUZZ_REFUSALS names.
- No traffic leaves loopback: a generated http(s) or hf:// URL (a webhook, an image_url, a LoRA) in a
  query or JSON body has its host replaced by 127.0.0.1 port 9 before it is sent, which the outbound
  policy refuses at once (address_not_allowed) without a DNS lookup or a connection. Loopback URLs (the
  server's own /files/ links) are kept.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis
from schemathesis.core.failures import ServerError
from schemathesis.openapi.checks import RejectedPositiveData

REFUSALS = "x-darkroom-refusals"
_REMOTE_URL = re.compile(r"^(https?|hf)://(?!(127\.0\.0\.1|localhost)[:/])[^/]*", re.IGNORECASE)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """False (drop it) for a declared refusal of a well-formed request; True for every other failure."""
    if isinstance(failure, ServerError):  # a 5xx: only a start deadline the client set itself and missed
        if response.headers.get("x-fal-request-timeout-type", [""])[0] != "user":
            return True
    elif not isinstance(failure, RejectedPositiveData):
        return True
    declared = case.operation.responses.find_by_status_code(response.status_code)
    refusals = declared.definition.get(REFUSALS, []) if declared is not None else []
    refusal = _refusal(response)
    if refusal is None or refusal not in refusals:
        return True
    _count(refusal)
    return False


def _refusal(response: Any) -> str | None:
    """The body's error type (the first event's, for a stream); a HEAD's, from x-fal-error-type."""
    text = response.text or ""
    if not text:
        return str(response.headers.get("x-fal-error-type", [""])[0]) or None
    if "text/event-stream" in response.headers.get("content-type", [""])[0]:
        text = next((line[5:] for line in text.splitlines() if line.startswith("data:")), "")
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    found = body.get("error_type", body.get("status"))
    return found if isinstance(found, str) else None


def _count(refusal: str) -> None:
    path = os.environ.get("DARKROOM_FUZZ_REFUSALS")
    if path:
        with open(path, "a") as counted:
            counted.write(refusal + "\n")


def _localize(container: Any) -> None:
    """Point every remote URL in ``container`` (a dict or list, nested) at 127.0.0.1:9, in place."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, value in list(items):
        if isinstance(value, str):
            container[key] = _REMOTE_URL.sub(lambda m: f"{m[1]}://127.0.0.1:9", value)
        elif isinstance(value, dict | list):
            _localize(value)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """Before every request of every phase (the coverage phase's too, which map hooks do not see)."""
    for container in (case.query, case.body):
        if isinstance(container, dict | list):
            _localize(container)

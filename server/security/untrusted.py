"""Text from clients, made safe once, at the edge.

- ``parse_url``: the one URL parser. Every URL a client gives (``image_url`` and the other URL fields, a
  LoRA's https path, the ``fal_webhook`` query parameter, a WebSocket submit's ``webhook_url``) and every
  redirect's ``Location`` goes through it. What it cannot parse completely (a port past 65535, an
  unclosed IPv6 bracket, a backslash, a space or control character, a host that is no DNS name) is a
  ``UrlError`` saying why; the edge turns it into a 422 naming the field (``url_field``, or pydantic's
  own error for a body field), a redirect into a failure of that input.
- ``check_name``: a file or model name, refused before any filesystem call where a filesystem would
  refuse it (NUL and other control characters, a part over 255 bytes, text that is not Unicode).
- ``escape_controls`` and ``LogFormatter``: every log record on one line, control characters escaped,
  so a newline in a request value cannot forge a log line.
"""

from __future__ import annotations

import logging
import re

from yarl import URL

from server.errors import RequestValidationError

MAX_URL_CHARS = 8192
MAX_NAME_PART_BYTES = 255  # most file systems' limit for one name
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers break lines at.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class UrlError(ValueError):
    """A URL that cannot be parsed; the message says why (pydantic shows it as a field's error)."""


def escape_controls(text: str) -> str:
    """``text`` with every control character as a visible escape (``\\n``, ``\\x00``)."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return _CONTROL.sub(lambda m: named.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def parse_url(text: str, *, base: URL | None = None) -> URL:
    """``text`` as an absolute URL, with a host if it is http(s) (relative to ``base`` when given: a
    redirect's Location), or a UrlError saying what keeps it from being one. Which schemes and addresses
    may be fetched is ``netpolicy``'s to say."""
    if len(text) > MAX_URL_CHARS:
        raise UrlError(f"the URL is {len(text)} characters long, at most {MAX_URL_CHARS} are accepted")
    if _CONTROL.search(text) or " " in text:
        raise UrlError("a URL cannot contain spaces or control characters (percent-encode them)")
    try:
        url = URL(text)
        if base is not None:
            url = base.join(url)
        url.port  # noqa: B018 - yarl checks the port as it reads it
    except (ValueError, UnicodeError) as e:
        raise UrlError(f"not a URL that can be parsed: {e}") from None
    host = url.raw_host
    if not url.scheme or (not host and url.scheme in ("http", "https")):
        raise UrlError("expected an absolute URL with a host, like https://example.com/file.png")
    if (
        host
        and not (host.startswith("[") or ":" in host)
        and not all(_DNS_LABEL.fullmatch(label) for label in host.removesuffix(".").split("."))
    ):
        raise UrlError(f"{escape_controls(host)!r} is not a host name (letters, digits, - and . only)")
    return url


def url_field(text: str, where: str, name: str) -> URL:
    """``parse_url`` for a query parameter or header: a 422 naming it when the URL cannot be parsed."""
    try:
        return parse_url(text)
    except UrlError as e:
        raise RequestValidationError(
            [{"loc": [where, name], "msg": str(e), "type": "url_parsing", "input": text}]
        ) from None


def check_name(name: str) -> str:
    """``name`` (a file or model name, "/"-separated) if a filesystem could hold it; a ValueError
    saying why not, before anything touches the filesystem."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the name is not valid Unicode text (a lone surrogate)") from None
    if _CONTROL.search(name):
        raise ValueError("a file name cannot contain NUL or other control characters")
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > MAX_NAME_PART_BYTES:
        raise ValueError(f"a part of the name is {longest} bytes; a file holds {MAX_NAME_PART_BYTES} at most")
    return name


class LogFormatter(logging.Formatter):
    """One line per record: the message's control characters escaped (a request's newline cannot start a
    forged line), a traceback's lines indented under it with their control characters escaped too."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())

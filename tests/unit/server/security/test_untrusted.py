"""The one URL parser, the name check and the log formatter (``server/security/untrusted.py``)."""

from __future__ import annotations

import io
import logging

import pytest
from yarl import URL

from server.errors import RequestValidationError
from server.security.untrusted import (
    LogFormatter,
    UrlError,
    check_name,
    escape_controls,
    parse_url,
    url_field,
)

# What an independent probe sent: each was a 500 before (yarl raised, or aiohttp did at the fetch).
UNPARSEABLE = [
    ("https://evil.invalid\\@127.0.0.1/a.png", "backslash"),
    ("https://[::1/a.png", "IPv6"),
    ("https://h:99999/", "Port out of range"),
    ("https://h:-1/", "Port out of range"),
    ("https://xn--/", "not a host name"),
    ("https://exa\x00mple.com/", "control characters"),
    ("https://a b/x", "spaces"),
    ("https://ex%41mple.com/a.png", "not a host name"),
    ("https://a..b/x.png", "not a host name"),
    ("https:///x.png", "absolute URL with a host"),
    ("a picture of a cat", "spaces"),
    ("cat.png", "absolute URL"),
    ("https://example.com/" + "a" * 9000, "characters long"),
]


@pytest.mark.parametrize(("text", "reason"), UNPARSEABLE)
def test_unparseable_urls_say_why(text: str, reason: str) -> None:
    with pytest.raises(UrlError, match=reason):
        parse_url(text)


@pytest.mark.parametrize(
    "text",
    ["https://example.com/a.png?x=1#f", "http://127.0.0.1:8080/a", "https://[::1]:443/a", "https://é.example/a",
     "https://user:pw@example.com/a", "file:///etc/passwd", "ftp://example.com/x"],
)  # fmt: skip
def test_parseable_urls_come_back_parsed(text: str) -> None:
    assert parse_url(text) == URL(text)  # schemes and addresses are netpolicy's to refuse


def test_a_redirect_location_is_relative_to_the_url_it_came_from() -> None:
    assert (
        str(parse_url("/b.png?x", base=URL("https://example.com/a/a.png"))) == "https://example.com/b.png?x"
    )
    with pytest.raises(UrlError, match="Port out of range"):
        parse_url("https://example.com:70000/", base=URL("https://example.com/"))


def test_url_field_is_a_422_naming_the_field() -> None:
    with pytest.raises(RequestValidationError) as caught:
        url_field("https://[::1/hook", "query", "fal_webhook")
    (entry,) = caught.value.errors
    assert entry["loc"] == ["query", "fal_webhook"] and "IPv6" in entry["msg"] and caught.value.status == 422


@pytest.mark.parametrize(
    ("name", "reason"),
    [("tiny/x.safetensors\x00.txt", "NUL"), ("a\nb.safetensors", "control"), ("a\x7f", "control"),
     ("x" * 256 + ".safetensors", "bytes"), ("é" * 128, "bytes"), ("\ud800.safetensors", "Unicode")],
)  # fmt: skip
def test_names_a_filesystem_refuses_are_refused_first(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_name(name)


def test_ordinary_names_pass() -> None:
    assert check_name("tiny/flux2_vae.safetensors") == "tiny/flux2_vae.safetensors"
    assert check_name("é" * 127 + "/x") == "é" * 127 + "/x"


def test_escape_controls() -> None:
    assert escape_controls(
        "a\nb\rc\td\x00e\x1bf\u2028g\x85"
    ) == "a\\nb\\rc\\td\\x00e\\x1bf\\u2028g\\x85".replace("\\u2028", "\\x2028")


def test_the_log_formatter_keeps_each_record_on_its_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test_untrusted")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("vae %s refused", "x\n2026-01-01 INFO server.app: FORGED")
        try:
            raise ValueError("bad value 'y\nFORGED'")
        except ValueError:
            log.exception("failed on %s", "z\r\nFORGED")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING vae x\\n2026-01-01 INFO server.app: FORGED refused"
    assert lines[1] == "ERROR failed on z\\r\\nFORGED"
    assert all(line.startswith("    ") for line in lines[2:]) and len(lines) > 3, lines
    assert not any(line.startswith("FORGED") for line in lines)  # a traceback line is indented

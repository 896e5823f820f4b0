"""The documented pattern of file names (LoRA paths, blend models): the subset of check_name's names a
JSON Schema can state, checked in linear time by a backtracking engine (clients validate with one)."""

from __future__ import annotations

import re
import time

import pytest

from server.security.untrusted import check_name
from server.workflows.request_schema import NAME_PATTERN

PATTERN = re.compile(NAME_PATTERN)


@pytest.mark.parametrize(
    "name",
    ["tiny/flux2-lora-a.safetensors", "a" * 255, "é" * 63, "abc/déf/x", "日本語/モデル.safetensors",
     "a" * 31 + "é" + "b" * 31, "a/b/c"],
)  # fmt: skip
def test_documented_names_are_names_the_server_takes(name: str) -> None:
    assert PATTERN.search(name)
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["a" * 256, "é" * 64, "a\nb", "a\x00", "abc\n", "a/b\u2028"])
def test_what_the_pattern_refuses(name: str) -> None:
    assert not PATTERN.search(name)


def test_a_long_name_failing_at_its_end_is_refused_at_once() -> None:
    # Overlapping branches made this exponential: 20 parts took 0.3 s, each 2 more 4 times as long.
    for name in ["/".join(["ab"] * 2000) + "\x01", "/".join(["é" * 60] * 200) + "\n", "ab/" * 3000 + "\n"]:
        started = time.perf_counter()
        assert not PATTERN.search(name)
        assert time.perf_counter() - started < 1.0  # linear: milliseconds; the old pattern: hours

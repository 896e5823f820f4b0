"""The bad-input drill (``scripts/drill_bad_input.py``) in make test: 130+ bad requests (types, ranges,
data URIs, not-images, truncated images and decompression bombs, SSRF targets and redirects into them,
unparseable URLs and redirect Locations, path traversal and names with NUL, oversized and malformed
bodies, slow-loris clients, uploaded pages served back, /ws messages past the body's limits, malformed
and duplicate Authorization headers, keys in query strings, forged log lines), each answered with its
specific 4xx and message, never a 5xx; the server serves a good request afterwards, and its log holds no
key, no raw control character and no line a request forged. Its figures are printed here too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.drills import run_drill

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def test_every_bad_input_gets_its_4xx(comfyui_dir: Path, tiny_models_dir: Path) -> None:
    found = run_drill("bad_input", comfyui_dir=comfyui_dir, models_dir=tiny_models_dir, timeout_s=270)
    assert found["returncode"] == 0 and not found["failures"], found
    assert found["cases"] >= 130 and found["passed"] == found["cases"] and found["server_errors"] == 0
    assert not found["key_in_log"] and found["unframed_log_lines"] == 0
    assert found["raw_control_characters_in_log"] == 0
    assert found["slow_loris_body_s"] < 10 and found["slow_loris_headers_s"] < 10

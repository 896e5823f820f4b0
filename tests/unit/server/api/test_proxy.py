"""What the editor's relay lets through to its worker: reads, and writes to uploads and user files."""

from __future__ import annotations

import pytest

from server.api.proxy import check_allowed
from server.errors import ForbiddenError


@pytest.mark.parametrize(
    ("method", "tail"),
    [
        ("GET", ""), ("GET", "assets/index.js"), ("GET", "api/object_info"), ("HEAD", "api/view"),
        ("POST", "api/upload/image"), ("POST", "api/upload/mask"),
        ("POST", "api/userdata/workflows%2Fa.json"), ("DELETE", "api/userdata/a.json"),
        ("POST", "api/userdata/a.json/move/b.json"), ("POST", "api/settings"),
        ("POST", "api/settings/Comfy.TutorialCompleted"),
    ],
)  # fmt: skip
def test_reads_uploads_and_user_files_pass(method: str, tail: str) -> None:
    check_allowed(method, tail)


@pytest.mark.parametrize(
    ("method", "tail"),
    [
        ("POST", "api/free"), ("POST", "api/history"), ("POST", "api/prompt"), ("POST", "api/interrupt"),
        ("POST", "api/queue"), ("PUT", "api/upload/image"), ("POST", "api/userdata/a/b/c"),
        ("POST", "internal/models/download"), ("DELETE", "api/history"), ("POST", "upload/image"),
    ],
)  # fmt: skip
def test_everything_else_is_refused(method: str, tail: str) -> None:
    with pytest.raises(ForbiddenError, match="not relayed"):
        check_allowed(method, tail)

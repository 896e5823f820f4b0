"""Headless Chromium for the page tests: Debian's `chromium`, driven by Playwright (import as `browser`).

Where the browser or Playwright is missing the tests skip saying why; under CI=true they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.settings import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = PROJECT_ROOT / "data" / "screenshots"


def chromium_or_skip() -> None:
    missing = []
    if CHROMIUM is None:
        missing.append("Debian's chromium (apt-get install chromium; make test-setup does it as root)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (the dev extra)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@contextlib.asynccontextmanager
async def open_page(**context_options: Any) -> AsyncIterator[Any]:
    """A fresh page; ``page.problems`` collects JS exceptions, console errors and failed requests."""
    from playwright.async_api import async_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        options = {"viewport": {"width": 1400, "height": 900}, **context_options}
        context = await launched.new_context(**options)
        page = await context.new_page()
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda m: (
                page.problems.append(f"console: {m.text} at {m.location.get('url')}")
                if m.type == "error"
                else None
            ),
        )
        page.on(
            "response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        try:
            yield page
        finally:
            await launched.close()

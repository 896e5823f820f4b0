"""The README and CONTRIBUTING.md as the tests read them (tests/unit/test_readme.py,
tests/facade/test_readme_routes.py, tests/e2e/test_readme_blocks.py): the parts marked with an HTML comment
``<!-- readme-test: KIND [ARGS] -->`` right before them (a fenced block, a list or a table), the
paths and modules they name, and the host, port and key substituted into a block before it runs.

Kinds: ``run open|keyed [expect=TEXT]`` a shell or Python block run against an open-access or a
keyed TLS server (its output must contain TEXT); ``file NAME`` a block the later run blocks find as
NAME in their directory; ``webhook-verify`` the standalone receiver's check; ``no-key-routes`` and
``sign-in-routes`` lists of routes; ``commands`` the command table; ``layers`` the layers table;
``not-run: REASON`` a shell or Python block that cannot run in a test (every other one must).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from server.settings import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
CONTRIBUTING = PROJECT_ROOT / "CONTRIBUTING.md"
DOCUMENTS = (README, CONTRIBUTING)

# What a reader replaces in the README's examples, and nothing else: the open server's address, the
# keyed (TLS) server's address and a key.
OPEN_ADDRESS = "127.0.0.1:8000"
KEYED_ADDRESS = "myhost:8000"
KEY_PLACEHOLDER = "<key>"

_MARKER = re.compile(r"^<!-- readme-test: (?P<spec>[^>]*?) -->\n", re.M)
_FENCE = re.compile(r"```(?P<lang>[\w-]*)\n(?P<code>.*?)^```", re.S | re.M)
_TICKED = re.compile(r"`([^`\n]+)`")
# A backticked path inside the repository: a top-level folder or file of it, then anything.
_TOP = ("server/", "custom_nodes/", "tests/", "scripts/", "workflows/")
_TOP_FILES = frozenset({
    "README.md", "CONTRIBUTING.md", "Makefile", "Dockerfile", "pyproject.toml", "constraints.txt",
    "compose.yaml", "model_manifest.yaml",
})  # fmt: skip


@dataclass
class Marked:
    """One marked part: its kind, its arguments, its text (a block's code, or the list/table lines)."""

    kind: str
    args: list[str]
    options: dict[str, str]
    text: str
    lang: str
    line: int
    document: Path = field(default=README)

    def where(self) -> str:
        return f"{self.document.name}:{self.line}"


def marked(document: Path = README, kind: str | None = None) -> list[Marked]:
    """The marked parts of ``document`` (of one kind), in order."""
    text = document.read_text()
    found = []
    for match in _MARKER.finditer(text):
        words = match["spec"].split()
        rest = text[match.end() :]
        fence = _FENCE.match(rest)
        if fence:
            body, lang = fence["code"], fence["lang"]
        else:  # a list or a table: the lines up to the next blank one
            body, lang = rest.split("\n\n", 1)[0], ""
        found.append(
            Marked(
                kind=words[0],
                args=[w for w in words[1:] if "=" not in w],
                options=dict(w.split("=", 1) for w in words[1:] if "=" in w),
                text=body,
                lang=lang,
                line=text.count("\n", 0, match.start()) + 1,
                document=document,
            )  # fmt: skip
        )
    return [m for m in found if kind is None or m.kind == kind]


def unmarked_blocks(document: Path) -> list[int]:
    """Lines of the shell and Python blocks of ``document`` that no marker precedes."""
    text = document.read_text()
    return [
        text.count("\n", 0, fence.start()) + 1
        for fence in re.finditer(r"^```(sh|bash|python)\n", text, re.M)
        if not re.search(r"<!-- readme-test: [^>]*-->\n$", text[: fence.start()])
    ]


def ticked(text: str) -> list[str]:
    """The backticked spans of ``text``."""
    return _TICKED.findall(text)


def repo_path(token: str) -> str | None:
    """The repository path a backticked span names (None if it names none); ``<x>`` and ``*`` parts
    are wildcards."""
    token = token.split(":", 1)[0].split(" ", 1)[0]
    if token in _TOP_FILES or (token.startswith(_TOP) and re.fullmatch(r"[\w./<>*{}-]+", token)):
        return re.sub(r"<[^>]+>|\{[^}]+\}", "*", token)
    return None


def path_exists(pattern: str) -> bool:
    """Whether a path (with ``*`` wildcards, a trailing ``/`` for a folder) exists in the checkout."""
    folder = pattern.endswith("/")
    matches = list(PROJECT_ROOT.glob(pattern.rstrip("/"))) if "*" in pattern else [PROJECT_ROOT / pattern]
    return any(m.is_dir() if folder else m.exists() for m in matches)


def resolve_dotted(name: str) -> object:
    """Import ``a.b.c`` (the longest importable module prefix, then attributes); raises if absent."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def table_rows(text: str) -> list[list[str]]:
    """A Markdown table's body rows as cells (header and rule dropped)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [r for r in rows[2:] if r and r[0]]


def substitute(code: str, *, address: str, key: str = "") -> str:
    """A block as a reader runs it: the README's address (open or keyed) and key replaced by theirs."""
    code = code.replace(OPEN_ADDRESS, address).replace(KEYED_ADDRESS, address)
    return code.replace(KEY_PLACEHOLDER, key) if key else code

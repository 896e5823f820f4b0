"""The README and CONTRIBUTING.md against the code: the command synopses against the `darkroom`
parser (both ways), every path and module they name, and the layers table. Their runnable blocks run
in tests/e2e/test_readme_blocks.py, their routes in tests/facade/test_readme_routes.py."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest

from server.cli import build_parser
from server.settings import PROJECT_ROOT
from tests.readme import (
    DOCUMENTS,
    README,
    marked,
    path_exists,
    repo_path,
    resolve_dotted,
    table_rows,
    ticked,
    unmarked_blocks,
)

_TOKEN = re.compile(r"<[^>]+>|\[|\]|[^\s\[\]]+")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = _subcommands(parser)
    if not subs:
        return [path]
    return [leaf for name, sub in subs.items() for leaf in _leaves(sub, (*path, name))]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def _synopses() -> list[str]:
    (table,) = marked(README, "commands")
    rows = [ticked(row[0]) for row in table_rows(table.text)]
    return [cell[0] for cell in rows if cell and cell[0].startswith("darkroom")]


Walked = tuple[list[argparse.ArgumentParser], tuple[str, ...], list[tuple[str, bool]], int]


def _walk(synopsis: str) -> Walked:
    """The parsers a synopsis goes through, its command path, its options (and whether each is shown
    with a value) and its positional placeholders."""
    tokens = _TOKEN.findall(synopsis)
    assert tokens[0] == "darkroom", synopsis
    chain, path, options, positionals, i = [build_parser()], (), [], 0, 1
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            following = tokens[i + 1] if i + 1 < len(tokens) else "]"
            valued = following not in ("[", "]") and not following.startswith("--")
            options.append((token, valued))
            i += 2 if valued else 1
            continue
        if token not in ("[", "]"):
            subs = _subcommands(chain[-1])
            if token in subs:
                chain.append(subs[token])
                path = (*path, token)
            else:
                positionals += 1
        i += 1
    return chain, path, options, positionals


@pytest.mark.parametrize("synopsis", _synopses())
def test_a_synopsis_matches_the_parser(synopsis: str) -> None:
    chain, path, options, positionals = _walk(synopsis)
    leaf = chain[-1]
    assert not _subcommands(leaf), f"{synopsis!r} stops at {' '.join(path)!r}, which needs a subcommand"
    known = {name: action for parser in chain for name, action in _options(parser).items()}
    for option, valued in options:
        assert option in known, f"{synopsis!r}: {option} is not an option of `darkroom {' '.join(path)}`"
        takes_value = known[option].nargs != 0
        assert valued == takes_value, f"{synopsis!r}: {option} {'takes a' if takes_value else 'has no'} value"
    shown = {option for option, _ in options}
    missing = sorted(set(_options(leaf)) - shown)
    assert not missing, f"{synopsis!r} leaves out {missing}"
    wanted = sum(1 for a in leaf._actions if not a.option_strings)
    assert positionals == wanted, f"{synopsis!r} shows {positionals} arguments; the parser takes {wanted}"


def test_every_command_and_global_option_has_a_synopsis() -> None:
    walked = [_walk(synopsis) for synopsis in _synopses()]
    documented = {path for _, path, _, _ in walked}
    assert documented == set(_leaves(build_parser())), "README's command table and the parser differ"
    shown = {option for _, _, options, _ in walked for option, _ in options}
    assert set(_options(build_parser())) <= shown, "a global option is in no synopsis"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.name)
def test_every_path_and_module_named_exists(document) -> None:
    text = document.read_text()
    assert not re.search(r"(?<![.\w])\.\./", text), f"{document.name} points outside the repository"
    absent = []
    for token in ticked(text):
        token = re.sub(r"\(.*\)$", "", token)  # a call shown with its arguments
        path = repo_path(token)
        if path is not None and not path_exists(path):
            absent.append(token)
        elif path is None and re.fullmatch(r"server(\.\w+)+", token):
            try:
                resolve_dotted(token)
            except (ImportError, AttributeError):
                absent.append(token)
    assert not absent, f"{document.name} names paths or modules that do not exist: {absent}"


def test_the_layers_table_names_real_modules() -> None:
    (layers,) = marked(README, "layers")
    rows = table_rows(layers.text)
    assert len(rows) >= 8, layers.where()
    for row in rows:
        (package,) = [t for t in ticked(row[0]) if repo_path(t)]
        assert path_exists(package), f"{layers.where()}: {package} does not exist"
        if not package.endswith("/"):
            continue
        for cell in row[1:]:
            for name in ticked(cell):
                if re.fullmatch(r"\w+/?", name):
                    module = package + (name if name.endswith("/") else f"{name}.py")
                    assert path_exists(module), f"{layers.where()}: {package} has no {name}"


def test_the_markers_are_known_and_the_run_blocks_are_complete() -> None:
    kinds = {
        "run",
        "file",
        "webhook-verify",
        "no-key-routes",
        "sign-in-routes",
        "commands",
        "layers",
        "not-run:",
    }
    found = [m for document in DOCUMENTS for m in marked(document)]
    for document in DOCUMENTS:
        unmarked = unmarked_blocks(document)
        assert not unmarked, f"{document.name}: mark the blocks at lines {unmarked} (run, or not-run: why)"
    assert {m.kind for m in found} <= kinds, [m.where() for m in found if m.kind not in kinds]
    for block in found:
        if block.kind == "run":
            assert block.args in (["open"], ["keyed"]) and block.lang in ("sh", "python"), block.where()
            assert "expect" in block.options, f"{block.where()}: a run block says what its output shows"
    assert {"run", "file", "webhook-verify", "no-key-routes", "sign-in-routes", "commands", "layers"} <= {
        m.kind for m in found
    }


def test_make_serve_sets_up_the_data_dir_it_serves(tmp_path) -> None:
    """`make serve DARKROOM_DATA_DIR=...` installs ComfyUI and builds the tiny models there (as the
    README says), not only into ./data: `make -n` shows what it would run."""
    data = tmp_path / "elsewhere"
    shown = subprocess.run(
        ["make", "-n", "serve", f"DARKROOM_DATA_DIR={data}"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert f"touch {data}/.comfyui-stamp" in shown.stdout and f"touch {data}/.tiny-stamp" in shown.stdout
    assert "darkroom models make-tiny" in shown.stdout and "darkroom serve" in shown.stdout

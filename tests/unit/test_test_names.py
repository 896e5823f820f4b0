"""pytest imports test modules by basename (rootdir-relative, no packages): two test files with one name
in the main run stop its collection. tests/engine runs in its own process, so it is checked apart."""

from __future__ import annotations

from collections import Counter

from server.settings import PROJECT_ROOT

TESTS = PROJECT_ROOT / "tests"


def _repeated(files: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(files).items() if count > 1)


def test_test_module_names_are_unique_in_each_pytest_run() -> None:
    engine = TESTS / "engine"
    main = [
        p.name for p in TESTS.rglob("test_*.py") if engine not in p.parents and "node_modules" not in p.parts
    ]
    assert main, "no test modules found"
    assert _repeated(main) == [], "rename one of each: pytest cannot collect both"
    assert _repeated([p.name for p in engine.rglob("test_*.py")]) == []

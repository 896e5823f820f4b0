"""The architecture holds: import-linter's contracts in pyproject.toml (layers, no torch or ComfyUI in
the facade, no cycles) are kept by the tree, and they do catch an import against the grain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "custom_nodes")])}
    only = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml"), *only],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """server/, the node pack and pyproject.toml, copied so a test can break them."""
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT_ROOT / "server", tmp_path / "server", ignore=ignore)
    shutil.copytree(
        PROJECT_ROOT / "custom_nodes" / "darkroom", tmp_path / "custom_nodes" / "darkroom", ignore=ignore
    )
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("server/queue/order.py", "from server.api import state", "server-layers"),
        ("server/media/inputs.py", "from server.workflows import mapping", "server-layers"),
        ("server/engine/worker.py", "import torch", "server-no-engine-code"),
        ("server/workflows/request_schema.py", "from server.workflows import mapping", "no-cycles"),
        ("custom_nodes/darkroom/ops/lora.py", "from ..nodes import extras", "pack-layers"),
        ("custom_nodes/darkroom/ops/blend.py", "from ..tiny import noise", "pack-layers"),
        ("custom_nodes/darkroom/formats/arch/base.py", "import comfy.sd", "pack-formats-without-comfyui"),
        ("custom_nodes/darkroom/nodes/output.py", "import server", "pack-never-imports-the-facade"),
    ],
)
def test_an_import_against_the_grain_breaks_a_contract(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    path = tree_copy / module
    assert lint_imports(tree_copy, contract).returncode == 0, "the copy keeps the contract before the change"
    path.write_text(path.read_text() + f"\n{line}\n")
    result = lint_imports(tree_copy, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout, result.stdout

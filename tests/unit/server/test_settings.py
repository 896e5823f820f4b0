"""Settings: built from DARKROOM_* variables, every one documented in the README."""

from __future__ import annotations

import re

import pytest

from server.settings import PROJECT_ROOT, describe, load_settings


def test_every_setting_is_documented_in_the_readme():
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(DARKROOM_[A-Z0-9_]+)` \|", readme, flags=re.M))
    declared = {name for name, _, _ in describe()}
    assert declared - documented == set(), "settings missing from the README table"
    assert documented - declared == set(), "README documents settings that do not exist"


def test_environment_is_read_and_flags_win():
    settings = load_settings({"DARKROOM_PORT": "9001", "DARKROOM_WORKERS": "2"}, port=9002)
    assert settings.port == 9002 and settings.workers == 2


def test_a_malformed_number_names_the_variable():
    with pytest.raises(ValueError, match="DARKROOM_PORT"):
        load_settings({"DARKROOM_PORT": "eighty"})


def test_paths_derive_from_the_data_dir(tmp_path):
    settings = load_settings({"DARKROOM_DATA_DIR": str(tmp_path)})
    assert settings.models_path == tmp_path / "models"
    assert settings.outputs_path == tmp_path / "outputs"

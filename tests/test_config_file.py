"""A config file given to ``Settings.load`` is read without touching the process environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eftgw.config import Settings

pytestmark = pytest.mark.once  # settings files only: the backend does not matter here


def test_a_config_file_is_read_and_remembered_but_never_written_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values come from the file, the settings know which file, and ``EFTGW_CONFIG`` stays unset, so a later
    ``Settings()`` in the same process (a test, an embedded gateway) is not silently read from it."""
    monkeypatch.delenv("EFTGW_CONFIG", raising=False)
    config = tmp_path / "gw.toml"
    config.write_text('region = "emea"\nhttp_port = 9443\n')
    settings = Settings.load(config)
    assert (settings.region, settings.http_port) == ("emea", 9443)
    assert settings.config_file == config.resolve()
    assert "EFTGW_CONFIG" not in os.environ
    assert Settings().region == "us"


def test_the_environment_still_names_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``EFTGW_CONFIG`` keeps working for operators who set it instead of passing ``--config``."""
    config = tmp_path / "gw.toml"
    config.write_text('region = "apac"\n')
    monkeypatch.setenv("EFTGW_CONFIG", str(config))
    assert Settings.load().region == "apac"
    assert Settings.load().config_file == config.resolve()

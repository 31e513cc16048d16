"""Fixtures for the launcher tests."""

import pytest


@pytest.fixture(autouse=True)
def launchpad_home(tmp_path, monkeypatch):
  """Run directories go to a temporary home, never the real one."""
  home = tmp_path / "lphome"
  monkeypatch.setenv("LAUNCHPAD_HOME", str(home))
  return home

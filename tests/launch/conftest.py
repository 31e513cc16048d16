"""Fixtures for the launcher tests."""

import signal

import pytest


@pytest.fixture(autouse=True)
def restore_signal_handlers():
  """Launchers install SIGINT/SIGTERM handlers in the main thread; undo them."""
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  yield
  for sig, handler in previous.items():
    signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def launchpad_home(tmp_path, monkeypatch):
  """Run directories go to a temporary home, never the real one."""
  home = tmp_path / "lphome"
  monkeypatch.setenv("LAUNCHPAD_HOME", str(home))
  return home

"""Shared pytest configuration: the launchpad test fixtures (`lp_launch`), and
signal handlers put back after each test (launchers install their own)."""

import signal

import pytest

pytest_plugins = ["launchpad.testing"]


@pytest.fixture(autouse=True)
def restore_signal_handlers():
  """Launchers install SIGINT/SIGTERM handlers in the main thread; undo them."""
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  yield
  for sig, handler in previous.items():
    signal.signal(sig, handler)

"""Waiting for an observable state in tests: poll, bounded, fail naming what did not happen."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

TIMEOUT = 60.0  # bound on every wait


def wait_until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
  """Polls until `condition()` holds; fails the test naming `what` after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  event = threading.Event()
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"{what} did not happen within {timeout:g} s")
    event.wait(0.01)

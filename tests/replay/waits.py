"""Waits on a replay server's observable state, shared by the stream tests."""

from __future__ import annotations

from collections.abc import Callable

from launchpad import replay
from tests import waits

TIMEOUT = 30.0  # bound on every wait


def wait_until(predicate: Callable[[], object], what: str) -> None:
  """tests.waits.wait_until with the stream tests' TIMEOUT."""
  waits.wait_until(predicate, what, TIMEOUT)


def pending_samples(client: replay.Client, table: str) -> int:
  """Sample calls waiting for the table's rate limiter now, as the server counts them."""
  return client.server_info()[table].rate_limiter_info["sample_stats"]["pending"]

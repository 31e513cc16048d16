"""Restarting failed nodes: one policy for every launcher.

A node added with `restart='on-failure'` is started again when it fails,
at most `max_restarts` times, after a backoff that doubles each time. The
launcher only supplies how to start a node again (`Workers.start`). A restarted
node binds the addresses it had when it can, and registers again either way,
so handles that others hold keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from launchpad.control import control_pb2

if TYPE_CHECKING:  # the launcher's coordinator; programs name policies without loading it
  from launchpad.control.coordinator import Coordinator, NodeRecord

log = logging.getLogger(__name__)

NEVER, ON_FAILURE = "never", "on-failure"
MAX_BACKOFF_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
  """When to start a failed node again.

  Attributes:
    mode: 'never' (a failure stops the program) or 'on-failure'.
    max_restarts: restarts allowed before a failure stops the program.
    backoff: seconds before the first restart; doubles each time, up to 30 s.
  """

  mode: str = NEVER
  max_restarts: int = 3
  backoff: float = 1.0

  def __post_init__(self):
    if self.mode not in (NEVER, ON_FAILURE):
      raise ValueError(f"restart must be {NEVER!r} or {ON_FAILURE!r}, got {self.mode!r}.")
    if self.max_restarts < 0 or self.backoff < 0:
      raise ValueError("max_restarts and backoff must be >= 0.")


class Restarter:
  """Decides, when a node fails, whether to start it again (and does)."""

  def __init__(
    self,
    coordinator: Coordinator,
    policies: dict[str, RestartPolicy],
    respawn: Callable[[str], None],
  ):
    self._coordinator = coordinator
    self._policies = policies
    self._respawn = respawn

  def on_failure(self, record: NodeRecord) -> bool:
    """True if the node will be restarted; False lets the failure stop the program."""
    policy = self._policies.get(record.name, RestartPolicy())
    if policy.mode == NEVER or self._coordinator.stop_reason is not None:
      return False
    if record.restarts >= policy.max_restarts:
      log.error(
        "node %s failed again after %d restarts (max_restarts=%d); stopping the program",
        record.name,
        record.restarts,
        policy.max_restarts,
      )
      return False
    delay = min(policy.backoff * 2**record.restarts, MAX_BACKOFF_SECONDS)
    log.warning(
      "node %s failed (%s); restarting it in %.3g s (restart %d of %d)",
      record.name,
      record.description,
      delay,
      record.restarts + 1,
      policy.max_restarts,
    )
    timer = threading.Timer(delay, self._restart, (record.name,))
    timer.daemon = True
    timer.start()
    return True

  def _restart(self, name: str) -> None:
    if self._coordinator.stop_reason is not None:
      return
    self._coordinator.node_restarted(name)
    try:
      self._respawn(name)
    except Exception as e:  # noqa: BLE001 - in a timer thread: the policy must hear of it
      self._coordinator.report(
        control_pb2.NodeEvent(
          node=name,
          kind=control_pb2.NodeEvent.FAILED,
          description=f"node {name} could not be started again: {type(e).__name__}: {e}",
          traceback="".join(traceback.format_exception(e)),
        )
      )

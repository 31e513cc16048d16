"""The threads launcher (`local_mt`): every node is a thread of this process.

Nodes still talk through real courier servers and the coordinator, so a
program that works here works in processes and on other hosts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from launchpad.context import ProgramRuntime
from launchpad.launch import node_logging, worker
from launchpad.launch.plan import Plan
from launchpad.launch.session import Session

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ThreadsOptions:
  """The threads launcher has no options of its own."""


class ThreadsLauncher:
  """Every node in a thread of this process (`local_mt`, `test_mt`)."""

  options = ThreadsOptions
  single_host = True
  nodes_travel = False  # serialize_py_nodes=False may share unpicklable objects

  def prepare(self, session: Session, options: ThreadsOptions) -> _Threads:
    node_logging.show()  # the nodes' absl logging, as in node processes
    runtime = session.start_runtime(session.start_coordinator())
    return _Threads(session.plan, runtime)


LAUNCHER = ThreadsLauncher()


class _Threads:
  def __init__(self, plan: Plan, runtime: ProgramRuntime):
    self._nodes = {node.name: node for node in plan.workers}
    self._runtime = runtime
    self.threads: list[threading.Thread] = []

  def start_all(self) -> None:
    for name in self._nodes:
      self.start(name)

  def start(self, name: str) -> None:
    """Runs node `name` in a new thread (again, after a restart)."""
    thread = threading.Thread(
      target=worker.run_node, args=(self._nodes[name], self._runtime), name=name, daemon=True
    )
    self.threads.append(thread)
    thread.start()

  def join(self, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for thread in self.threads:
      thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in self.threads)

  def kill(self, names: list[str]) -> None:
    # Threads cannot be killed; they are daemons and end with the process.
    log.warning("threads of nodes %s keep running until the process exits", ", ".join(names))

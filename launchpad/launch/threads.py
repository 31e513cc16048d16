"""The threads launcher (`local_mt`): every node is a thread of this process.

Nodes still talk through real courier servers and the coordinator, so a
program that works here works in processes and on other hosts.
"""

from __future__ import annotations

import logging
import threading
import time

from launchpad.context import ProgramRuntime
from launchpad.control.coordinator import Coordinator
from launchpad.launch import node_logging, worker
from launchpad.launch.controller import Controller
from launchpad.launch.plan import Plan

log = logging.getLogger(__name__)


def launch(plan: Plan, grace_period: float = 10.0, handle_signals: bool = True) -> Controller:
  """Starts every node of `plan` in a thread and returns at once.

  With `handle_signals` (from the main thread only), Ctrl-C or SIGTERM stops
  the program gracefully; a second one exits at once. If a node fails after
  the main thread has returned, the process exits with status 1.
  """
  node_logging.show()  # the nodes' absl logging, as in node processes
  coordinator = Coordinator(plan.program, plan.node_names, plan.secret)
  runtime = ProgramRuntime(plan.program, coordinator.start(), plan.secret, source=plan.source)
  workers = _Threads(plan, runtime)
  controller = Controller(plan, coordinator, runtime, workers, grace_period)
  for node in plan.workers:
    workers.start(node.name)
  controller.start_supervisor(handle_signals)
  return controller


class _Threads:
  def __init__(self, plan: Plan, runtime: ProgramRuntime):
    self._nodes = {node.name: node for node in plan.workers}
    self._runtime = runtime
    self.threads: list[threading.Thread] = []

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

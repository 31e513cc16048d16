"""A launcher from another package: every node a thread, its lines marked.

It exists to test that a package adds a launcher through the
`launchpad.launchers` entry-point group, with options of its own (one a
flag of `lp launch`), using launchpad's public launcher interface only
(session.Launcher, Workers, registry.flag).
"""

from __future__ import annotations

import dataclasses
import threading

from launchpad.launch import registry
from launchpad.launch.session import Session
from launchpad.launch.worker import run_node


@dataclasses.dataclass(frozen=True)
class RelayOptions:
  """Options of the relay launcher."""

  banner: str = dataclasses.field(
    default="relay", metadata=registry.flag("the start of the line the launch prints")
  )


class RelayLauncher:
  options = RelayOptions
  single_host = True
  nodes_travel = True

  def prepare(self, session: Session, options: RelayOptions) -> _RelayThreads:
    print(f"{options.banner}: launching {session.plan.program}", flush=True)
    runtime = session.start_runtime(session.start_coordinator())
    return _RelayThreads(session.plan, runtime)


class _RelayThreads:
  def __init__(self, plan, runtime):
    self._nodes = {node.name: node for node in plan.workers}
    self._runtime = runtime
    self._threads: list[threading.Thread] = []

  def start_all(self) -> None:
    for name in self._nodes:
      self.start(name)

  def start(self, name: str) -> None:
    thread = threading.Thread(target=run_node, args=(self._nodes[name], self._runtime), daemon=True)
    self._threads.append(thread)
    thread.start()

  def join(self, timeout: float) -> bool:
    for thread in self._threads:
      thread.join(timeout)
    return not any(t.is_alive() for t in self._threads)

  def kill(self, names: list[str]) -> None:
    pass  # threads end with the process


LAUNCHER = RelayLauncher()

"""The multiprocess launcher (`local_mp`): every node in a process of its own.

Nodes start in parallel from a fork server that has launchpad imported
already, so a node process is ready in tens of milliseconds instead of the
second a fresh interpreter takes. Groups given `lp.PythonProcess(interpreter=
..., args=...)` start from that interpreter instead. Every node process dies
with the launcher, even when the launcher is killed with SIGKILL: it is in a
session of its own with a parent-death signal, and it stops by itself when
the coordinator disappears.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import cloudpickle
import psutil

from launchpad import runs
from launchpad.context import ProgramRuntime
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator
from launchpad.launch import process_main, restarts, signals
from launchpad.launch.controller import Controller
from launchpad.launch.output import OutputMux
from launchpad.launch.plan import Plan
from launchpad.nodes.base import Node
from launchpad.resources import PythonProcess

log = logging.getLogger(__name__)

_fork_server: Any = None
_fork_server_lock = threading.Lock()


def launch(
  plan: Plan,
  grace_period: float = 10.0,
  local_resources: dict[str, Any] | None = None,
  log_dir: pathlib.Path | None = None,
  terminal: Any = sys.stdout,
  handle_signals: bool = True,
) -> Controller:
  """Starts one process per node of `plan` and returns once all are started."""
  resources = _group_resources(local_resources or {})
  run = runs.create(plan.program, log_dir)
  output = OutputMux(run.path, terminal)
  processes = _Processes(plan, resources, output)
  coordinator = Coordinator(plan.program, plan.node_names, plan.secret)
  restarter = restarts.Restarter(coordinator, plan.restart_policies, processes.respawn)
  coordinator.set_failure_policy(restarter.on_failure)
  processes.coordinator = coordinator
  address = coordinator.start()
  run.write(address, plan.secret)
  runtime = ProgramRuntime(plan.program, address, plan.secret, source=plan.source)
  controller = Controller(plan, coordinator, runtime, processes, grace_period, run_dir=run.path)
  processes.start_all()
  if handle_signals and threading.current_thread() is threading.main_thread():
    signals.install(controller, coordinator, on_second=processes.kill_all)
  threading.Thread(
    target=_supervise, args=(controller, output, run), name=f"{plan.program}-supervisor"
  ).start()
  return controller


def _supervise(controller: Controller, output: OutputMux, run: runs.Run) -> None:
  controller.supervise()
  output.wait_drained(5.0)
  run.finish()


def _group_resources(local_resources: dict[str, Any]) -> dict[str, PythonProcess]:
  for group, resource in local_resources.items():
    if not isinstance(resource, PythonProcess):
      raise TypeError(
        f"local_resources[{group!r}] is a {type(resource).__name__}; the multiprocess "
        "launcher takes lp.PythonProcess(env=..., args=..., interpreter=...)."
      )
  return dict(local_resources)


def _fork_context():
  """The fork server, started once per launcher process with launchpad loaded."""
  global _fork_server
  with _fork_server_lock:
    if _fork_server is None:
      context = mp.get_context("forkserver")
      context.set_forkserver_preload(["launchpad", "launchpad.launch.process_main"])
      _fork_server = context
    return _fork_server


def _forked_main(payload: bytes, output: socket.socket) -> None:
  process_main.run(payload, output.detach())


class _Child:
  """One node process, forked or spawned."""

  def __init__(self, name: str, process: Any):
    self.name = name
    self.process = process
    self.pid: int = process.pid
    self.killed = False
    self.sentinel = process.sentinel if hasattr(process, "sentinel") else os.pidfd_open(process.pid)

  def exitcode(self) -> int | None:
    if isinstance(self.process, subprocess.Popen):
      return self.process.poll()
    self.process.join(0)
    return self.process.exitcode

  def kill(self) -> None:
    """SIGKILL to the node's whole session: its own children die with it."""
    self.killed = True
    try:
      os.killpg(self.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      try:
        os.kill(self.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


class _Processes:
  """The node processes of one program, and the thread that watches them exit."""

  def __init__(self, plan: Plan, resources: dict[str, PythonProcess], output: OutputMux):
    self._plan = plan
    self._resources = resources
    self._output = output
    self._nodes: dict[str, Node] = {}
    for worker in plan.workers:
      for node in worker.process_nodes():
        self._nodes[node.name] = node
    self._children: dict[str, _Child] = {}
    self._lock = threading.Lock()
    self._wake_r, self._wake_w = socket.socketpair()
    self.coordinator: Coordinator | None = None

  def start_all(self) -> None:
    for index, name in enumerate(self._nodes):
      self._start(name, index)
    threading.Thread(target=self._watch, name=f"{self._plan.program}-processes", daemon=True).start()

  def respawn(self, name: str) -> None:
    self._start(name, list(self._nodes).index(name))

  def _start(self, name: str, index: int) -> None:
    node = self._nodes[name]
    resource = self._resources.get(node.label, PythonProcess())
    spec = process_main.WorkerSpec(
      self._plan.program, self.coordinator.address, self._plan.secret, node, dict(resource.env)
    )
    payload = cloudpickle.dumps(spec)
    output = self._output.attach(name, index)
    if resource.interpreter or resource.args:
      process = subprocess.Popen(
        [resource.interpreter or sys.executable, "-m", "launchpad.launch.process_main", *resource.args],
        stdin=subprocess.PIPE,
        stdout=output.fileno(),
        stderr=output.fileno(),
        env={**os.environ, **resource.env},
      )
      process.stdin.write(payload)
      process.stdin.close()
    else:
      process = _fork_context().Process(
        target=_forked_main, args=(payload, output), name=name, daemon=False
      )
      process.start()
    output.close()
    with self._lock:
      self._children[name] = _Child(name, process)
    self._wake_w.send(b"x")

  def pids(self) -> dict[str, int]:
    with self._lock:
      return {name: child.pid for name, child in self._children.items()}

  def join(self, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with self._lock:
      children = list(self._children.values())
    for child in children:
      while child.exitcode() is None and time.monotonic() < deadline:
        multiprocessing.connection.wait([child.sentinel], max(0.0, deadline - time.monotonic()))
    return all(child.exitcode() is not None for child in children)

  def kill(self, names: list[str]) -> None:
    with self._lock:
      children = [self._children[n] for n in names if n in self._children]
    for child in children:
      child.kill()

  def kill_all(self) -> None:
    self.kill(list(self.pids()))

  def _watch(self) -> None:
    """Reports nodes whose process ended without saying how their node ended."""
    watched: dict[Any, _Child] = {}
    while True:
      with self._lock:
        for child in self._children.values():
          if child.sentinel not in watched and child.exitcode() is None:
            watched[child.sentinel] = child
      ready = multiprocessing.connection.wait([self._wake_r, *watched])
      for item in ready:
        if item is self._wake_r:
          self._wake_r.recv(4096)
          continue
        child = watched.pop(item)
        self._exited(child, child.exitcode())

  def _exited(self, child: _Child, code: int | None) -> None:
    record = self.coordinator.nodes[child.name]
    if record.state in (FINISHED, FAILED) or child.killed:
      return
    self.coordinator.report(
      control_pb2.NodeEvent(
        node=child.name,
        kind=control_pb2.NodeEvent.FAILED,
        pid=child.pid,
        host=socket.gethostname(),
        description=exit_reason(code),
        traceback=_log_tail(self._output.log_path(child.name)),
      )
    )


def exit_reason(code: int | None) -> str:
  """Why a process ended, in words."""
  if code is None:
    return "the process ended in an unknown way"
  if code >= 0:
    return f"the process exited with status {code}"
  name = signal.Signals(-code).name
  hint = " (the kernel's out-of-memory killer sends SIGKILL)" if code == -signal.SIGKILL else ""
  return f"the process was killed by {name}{hint}"


def _log_tail(path: pathlib.Path, lines: int = 30) -> str:
  try:
    text = path.read_text(errors="replace").splitlines()
  except OSError:
    return ""
  return "last lines of its output:\n" + "\n".join(text[-lines:]) if text else ""


def node_usage(pids: dict[str, int]) -> dict[str, tuple[float, int]]:
  """CPU percent and resident memory of each node process (psutil)."""
  usage = {}
  for name, pid in pids.items():
    try:
      process = psutil.Process(pid)
      usage[name] = (process.cpu_percent(interval=None), process.memory_info().rss)
    except psutil.Error:
      continue
  return usage

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
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from launchpad import errors, runs
from launchpad import resources as resources_lib
from launchpad.context import ProgramRuntime
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator
from launchpad.courier import serialization
from launchpad.launch import process_main, tmux, zygote
from launchpad.launch.controller import Controller
from launchpad.launch.output import OutputMux
from launchpad.launch.plan import Plan
from launchpad.nodes.base import Node
from launchpad.resources import PythonProcess

log = logging.getLogger(__name__)


def launch(
  plan: Plan,
  grace_period: float = 10.0,
  local_resources: dict[str, Any] | None = None,
  log_dir: pathlib.Path | None = None,
  terminal: str = "current_terminal",
  handle_signals: bool = True,
) -> Controller:
  """Starts one process per node of `plan` and returns once all are started.

  Args:
    terminal: 'current_terminal' (node lines prefixed on stdout, and in log
      files), 'output_to_files', or 'tmux_session' (a tmux window per node).
  """
  resources = _group_resources(plan, local_resources or {})
  if terminal not in ("current_terminal", "output_to_files", "tmux_session"):
    raise ValueError(
      f"terminal={terminal!r}: use 'current_terminal', 'output_to_files' or 'tmux_session'."
    )
  if terminal == "tmux_session" and not shutil.which("tmux"):
    raise errors.LaunchpadError("terminal='tmux_session' needs tmux; install it or pick another.")
  run = runs.create(plan.program, log_dir)
  output = OutputMux(run.path, sys.stdout if terminal == "current_terminal" else None)
  coordinator = Coordinator(plan.program, plan.node_names, plan.secret)
  processes = _Processes(plan, resources, output, coordinator)
  address = coordinator.start()
  run.write(address, plan.secret)
  runtime = ProgramRuntime(plan.program, address, plan.secret, source=plan.source)
  controller = Controller(plan, coordinator, runtime, processes, grace_period, run_dir=run.path)
  processes.start_all()
  if terminal == "tmux_session":
    tmux.open_windows(run, list(processes.pids()))
  controller.start_supervisor(handle_signals, lambda: _close_run(output, run, terminal))
  return controller


def _close_run(output: OutputMux, run: runs.Run, terminal: str) -> None:
  output.wait_drained(5.0)
  if terminal == "tmux_session":
    tmux.close(run)
  run.finish()


def _group_resources(plan: Plan, local_resources: dict[str, Any]) -> dict[str, PythonProcess]:
  groups = {worker.label for worker in plan.workers}
  return resources_lib.by_group(
    plan.program, groups, local_resources, PythonProcess, "multiprocess"
  )


def _child_environment() -> dict[str, str]:
  """The launcher's environment, with its import path: node processes must
  import what the launcher imported (the target's own folder included)."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class _Child:
  """One node process."""

  def __init__(self, name: str, pid: int):
    self.name = name
    self.pid = pid
    self.killed = False
    self.returncode: int | None = None

  def kill(self) -> None:
    """SIGKILL to the node's whole session: its own children die with it."""
    self.killed = True
    zygote.kill_session(self.pid)


class _Processes:
  """The node processes of one program; reports those that end unannounced."""

  def __init__(
    self,
    plan: Plan,
    resources: dict[str, PythonProcess],
    output: OutputMux,
    coordinator: Coordinator,
  ):
    self._plan = plan
    self._resources = resources
    self._output = output
    self._nodes: dict[str, Node] = {worker.name: worker for worker in plan.workers}
    self._children: dict[str, _Child] = {}
    self._by_pid: dict[int, _Child] = {}
    self._early_exits: dict[int, int] = {}
    self._changed = threading.Condition()
    self._fork_server: zygote.ForkServer | None = None
    self.coordinator = coordinator

  def start_all(self) -> None:
    self._fork_server = zygote.ForkServer(self._exited_pid, _child_environment())
    for index, name in enumerate(self._nodes):
      self._start(name, index)

  def start(self, name: str) -> None:
    """Starts node `name` again (after a failure)."""
    self._start(name, list(self._nodes).index(name))

  def _start(self, name: str, index: int) -> None:
    node = self._nodes[name]
    resource = self._resources.get(node.label, PythonProcess())
    env = {process_main.RUN_DIR_VARIABLE: str(self._output.directory), **resource.env}
    spec = process_main.WorkerSpec(
      self._plan.program, self.coordinator.address, self._plan.secret, node, env
    )
    payload = serialization.cloudpickle_dumps(spec)
    output = self._output.attach(name, index)
    if resource.interpreter or resource.args:
      pid = self._spawn(resource, payload, output)
    else:
      pid = self._fork_server.start(payload, output)
    output.close()
    child = _Child(name, pid)
    with self._changed:
      self._children[name] = self._by_pid[pid] = child
      returncode = self._early_exits.pop(pid, None)
    if returncode is not None:
      self._exited_pid(pid, returncode)

  def _spawn(self, resource: PythonProcess, payload: bytes, output: socket.socket) -> int:
    process = subprocess.Popen(
      [resource.interpreter or sys.executable, "-c", process_main.COMMAND, *resource.args],
      stdin=subprocess.PIPE,
      stdout=output.fileno(),
      stderr=output.fileno(),
      env={**_child_environment(), **resource.env},
    )
    process.stdin.write(payload)
    process.stdin.close()
    threading.Thread(
      target=lambda: self._exited_pid(process.pid, process.wait()), daemon=True
    ).start()
    return process.pid

  def pids(self) -> dict[str, int]:
    with self._changed:
      return {name: child.pid for name, child in self._children.items()}

  def join(self, timeout: float) -> bool:
    with self._changed:
      ended = self._changed.wait_for(
        lambda: all(c.returncode is not None for c in self._children.values()), timeout
      )
    if ended and self._fork_server is not None:
      self._fork_server.close()
    return ended

  def kill(self, names: list[str]) -> None:
    with self._changed:
      children = [self._children[n] for n in names if n in self._children]
    for child in children:
      child.kill()

  def _exited_pid(self, pid: int, returncode: int) -> None:
    with self._changed:
      child = self._by_pid.pop(pid, None)
      if child is None:  # it exited before _start recorded it
        self._early_exits[pid] = returncode
        return
      child.returncode = returncode
      self._changed.notify_all()
    if not child.killed:
      report_unannounced_exit(
        self.coordinator,
        child.name,
        child.pid,
        socket.gethostname(),
        exit_reason(returncode),
        self._output.log_path(child.name),
      )


def report_unannounced_exit(
  coordinator: Coordinator,
  name: str,
  pid: int,
  host: str,
  description: str,
  log_path: pathlib.Path,
) -> None:
  """Reports node `name` FAILED if its process ended before the node itself
  reported how it ended (it crashed, or was killed by someone else)."""
  if coordinator.nodes[name].state in (FINISHED, FAILED):
    return
  coordinator.report(
    control_pb2.NodeEvent(
      node=name,
      kind=control_pb2.NodeEvent.FAILED,
      pid=pid,
      host=host,
      description=description,
      traceback=_log_tail(log_path),
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

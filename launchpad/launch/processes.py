"""The multiprocess launcher (`local_mp`): every node in a process of its own.

Nodes start in parallel from a fork server that has launchpad imported
already, so a node process is ready in tens of milliseconds instead of the
second a fresh interpreter takes. Groups given `lp.PythonProcess(interpreter=
..., args=...)` start from that interpreter instead. Every node process, and
every process it starts, ends with its node and with the launcher, even when
the launcher is killed with SIGKILL (see `zygote.py`). A node process that
exits with status 0 without having reported is a finished node; any other
status, or a signal, is a failure.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pathlib
import shutil
import signal
import socket
import sys
import threading
from typing import Any

from launchpad import errors
from launchpad import resources as resources_lib
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator
from launchpad.courier import serialization
from launchpad.launch import process_main, terminals, tmux, zygote
from launchpad.launch.output import OutputMux
from launchpad.launch.plan import Plan
from launchpad.launch.session import Session
from launchpad.nodes.base import Node
from launchpad.resources import PythonProcess

log = logging.getLogger(__name__)

# How long a failed node's report waits for the end of its output, so that it
# carries the last lines the node wrote (a child the node left may hold it open).
OUTPUT_END_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class ProcessesOptions:
  """Options of the multiprocess launcher (`lp.launch` arguments of the same names).

  Attributes:
    local_resources: group label -> lp.PythonProcess(args=, env=, interpreter=).
    log_dir: the run directory (default ~/.launchpad/runs/<program>-<time>/).
    terminal: 'current_terminal' (node lines prefixed here, and in log
      files), 'output_to_files', 'tmux_session' (a tmux window per node), or
      a window terminal ('xterm', 'gnome-terminal', 'gnome-terminal-tabs').
  """

  local_resources: dict[str, Any] | None = None
  log_dir: str | pathlib.Path | None = None
  terminal: str | None = None


class ProcessesLauncher:
  """One process per node, on this host (`local_mp`, `test_mp`)."""

  options = ProcessesOptions
  single_host = True
  nodes_travel = True

  def prepare(self, session: Session, options: ProcessesOptions) -> _Processes:
    plan = session.plan
    resources = _group_resources(plan, options.local_resources or {})
    windows = terminals.windows(options.terminal)
    terminal = terminals.output_mode(options.terminal, windows)
    if terminal not in ("current_terminal", "output_to_files", "tmux_session"):
      raise ValueError(
        f"terminal={terminal!r}: use 'current_terminal', 'output_to_files', 'tmux_session', "
        f"or one of {', '.join(terminals.PROGRAMS)}."
      )
    if terminal == "tmux_session" and not shutil.which("tmux"):
      raise errors.LaunchpadError("terminal='tmux_session' needs tmux; install it or pick another.")
    run = session.create_run(pathlib.Path(options.log_dir) if options.log_dir else None)
    output = OutputMux(run.path, sys.stdout if terminal == "current_terminal" else None)
    session.on_close("the node output", lambda: output.wait_drained(5.0))
    address = session.start_coordinator()
    session.start_runtime(address)
    processes = _Processes(plan, resources, output, session.coordinator)
    session.on_close("the node processes", processes.close)
    # Windows follow the nodes' log files, which need not exist yet.
    names = [worker.name for worker in plan.workers]
    if terminal == "tmux_session":
      session.on_close("the tmux session", lambda: tmux.close(run))
      tmux.open_windows(run, names)
    if windows is not None:
      session.on_close("the node windows", windows.close)
      windows.open(run.path, names)
    return processes


LAUNCHER = ProcessesLauncher()


def _group_resources(plan: Plan, local_resources: dict[str, Any]) -> dict[str, PythonProcess]:
  """Each group's settings, interpreters resolved to their paths."""
  groups = {worker.label for worker in plan.workers}
  resources = resources_lib.by_group(
    plan.program, groups, local_resources, PythonProcess, "multiprocess"
  )
  return {
    group: dataclasses.replace(r, interpreter=_interpreter(r.interpreter, group))
    if r.interpreter
    else r
    for group, r in resources.items()
  }


def _child_environment() -> dict[str, str]:
  """The launcher's environment, with its import path: node processes must
  import what the launcher imported (the target's own folder included)."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class _Child:
  """One start of a node's process."""

  def __init__(self, name: str, key: int, run: int):
    self.name = name
    self.key = key  # the fork server's name for this start
    self.run = run  # the node's restarts at this start
    self.pid = 0  # until the fork server has forked it
    self.killed = False
    self.returncode: int | None = None


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
    self._by_key: dict[int, _Child] = {}
    self._keys = itertools.count()
    self._changed = threading.Condition()
    self._fork_server: zygote.ForkServer | None = None
    self.coordinator = coordinator

  def start_all(self) -> None:
    self._fork_server = zygote.ForkServer(self._exited, _child_environment(), self._started)
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
    command = fresh_env = None
    if resource.interpreter or resource.args:
      interpreter = resource.interpreter or sys.executable
      command = [interpreter, "-c", process_main.COMMAND, *resource.args]
      fresh_env = {**_child_environment(), **resource.env}
    output = self._output.attach(name, index)
    child = _Child(name, next(self._keys), self.coordinator.nodes[name].restarts)
    with self._changed:
      self._children[name] = self._by_key[child.key] = child
    try:
      self._fork_server.start(child.key, payload, output, command, fresh_env)
    except errors.LaunchpadError:
      with self._changed:
        del self._by_key[child.key]
        child.returncode = -signal.SIGKILL  # never started: nothing to wait for
        self._changed.notify_all()
      raise
    finally:
      output.close()

  def pids(self) -> dict[str, int]:
    """Name -> pid of every node process started so far."""
    with self._changed:
      return {name: child.pid for name, child in self._children.items() if child.pid}

  def join(self, timeout: float) -> bool:
    with self._changed:
      return self._changed.wait_for(
        lambda: all(c.returncode is not None for c in self._children.values()), timeout
      )

  def close(self) -> None:
    """Ends the fork server, and with it every node process still there."""
    if self._fork_server is not None:
      self._fork_server.close()

  def kill(self, names: list[str]) -> None:
    """SIGKILL to each node's whole session; its keeper kills the rest."""
    with self._changed:
      children = [self._children[n] for n in names if n in self._children]
      for child in children:
        child.killed = True
    for child in children:
      self._fork_server.kill(child.key)

  def _started(self, key: int, pid: int) -> None:
    with self._changed:
      child = self._by_key.get(key)
      if child is not None:
        child.pid = pid

  def _exited(self, key: int, pid: int, returncode: int, oom_killed: bool) -> None:
    with self._changed:
      child = self._by_key.pop(key)
      child.pid = pid or child.pid
      child.returncode = returncode
      self._changed.notify_all()
    if not child.killed:
      report_exit(
        self.coordinator,
        child.name,
        child.pid,
        socket.gethostname(),
        returncode,
        oom_killed,
        self._output,
        child.run,
      )


def _interpreter(interpreter: str, group: str) -> str:
  """The path of `interpreter` (a path, or a name on PATH)."""
  path = shutil.which(interpreter)
  if path is None:
    raise errors.ProgramError(
      f"group {group!r}: lp.PythonProcess(interpreter={interpreter!r}) is not an executable "
      "file, nor a name found on PATH; give the path of a Python that has launchpad installed."
    )
  return path


def report_exit(
  coordinator: Coordinator,
  name: str,
  pid: int,
  host: str,
  returncode: int,
  oom_killed: bool,
  output: OutputMux,
  run: int,
) -> None:
  """Reports how node `name`'s process ended if the node itself did not
  say: status 0 is a node that finished (it called os._exit(0), say), any
  other status or a signal a failure (`oom_killed`: the out-of-memory
  killer was at work meanwhile). `run` is the node's restarts when this
  process started: the exit of a run the node was restarted from is old news."""
  if returncode != 0:
    report_unannounced_exit(
      coordinator, name, pid, host, exit_reason(returncode, oom_killed), output, run
    )
  elif coordinator.nodes[name].state not in (FINISHED, FAILED):
    coordinator.report(
      control_pb2.NodeEvent(node=name, kind=control_pb2.NodeEvent.FINISHED, pid=pid, host=host),
      run,
    )


def report_unannounced_exit(
  coordinator: Coordinator,
  name: str,
  pid: int,
  host: str,
  description: str,
  output: OutputMux,
  run: int,
) -> None:
  """Reports node `name` FAILED if its process ended before the node itself
  reported how it ended (it crashed, or was killed by someone else), with
  the last lines it wrote; `run` as in `report_exit`."""
  if coordinator.nodes[name].state in (FINISHED, FAILED):
    return
  coordinator.report(
    control_pb2.NodeEvent(
      node=name,
      kind=control_pb2.NodeEvent.FAILED,
      pid=pid,
      host=host,
      description=description,
      traceback=output.tail(name, OUTPUT_END_SECONDS),
    ),
    run,
  )


def exit_reason(code: int, oom_killed: bool = False) -> str:
  """Why a process ended, in words. The out-of-memory killer is named only
  on evidence: `oom_killed`, the kernel's count of its kills in the node's
  memory cgroup rose while the node ran."""
  if code >= 0:
    return f"the process exited with status {code}"
  name = signal.Signals(-code).name
  if oom_killed:
    return (
      f"the process was killed by {name}, by the kernel's out-of-memory killer (its memory "
      "cgroup counted an out-of-memory kill meanwhile); give the node more memory, or make it "
      "use less"
    )
  return f"the process was killed by {name}"

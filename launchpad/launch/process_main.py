"""The entry point of a node's process: set up the process, then run the node.

Used two ways: in a child freshly forked by the launcher's fork server
(`zygote.py`; fast: launchpad is already imported there), and in a fresh
interpreter for nodes that need one,
reading the same payload from standard input.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys

import cloudpickle

from launchpad.context import ProgramRuntime
from launchpad.launch import worker
from launchpad.nodes.base import Node
from launchpad.tls import TlsConfig

_PR_SET_PDEATHSIG = 1
# How a launcher starts a node in a fresh interpreter; the payload comes on stdin.
COMMAND = "from launchpad.launch import process_main; process_main.main()"
# The address a node's servers bind and advertise to the other nodes.
HOST_VARIABLE = "LAUNCHPAD_HOST"
# The run directory (node logs) of the launch, for nodes that write results.
RUN_DIR_VARIABLE = "LAUNCHPAD_RUN_DIR"


@dataclasses.dataclass
class WorkerSpec:
  """What a node's process needs; travels pickled, holding the program secret."""

  program: str
  coordinator: str
  secret: bytes
  node: Node
  env: dict[str, str]
  tls: TlsConfig | None = None

  def run(self) -> None:
    """Runs the node in the calling thread, in this process's environment
    plus the spec's, and returns when it ended (its outcome reported)."""
    os.environ.update(self.env)
    runtime = self.runtime()
    try:
      worker.run_node(self.node, runtime)
    finally:
      runtime.close()
    sys.stdout.flush()
    sys.stderr.flush()

  def runtime(self) -> ProgramRuntime:
    """The program as this node's process sees it. Its servers bind
    $LAUNCHPAD_HOST, which remote launchers set to an address the other
    hosts reach (default: loopback)."""
    host = os.environ.get(HOST_VARIABLE, "127.0.0.1")
    return ProgramRuntime(self.program, self.coordinator, self.secret, host=host, tls=self.tls)


def run(payload: bytes, output_fd: int | None) -> None:
  """Runs the node described by `payload` in this process and exits."""
  _detach()
  if output_fd is not None:
    _redirect_output(output_fd)
  spec: WorkerSpec = cloudpickle.loads(payload)
  spec.run()
  os._exit(0)  # node threads the user left behind must not keep the process


def _detach() -> None:
  """Own session (a Ctrl-C in the terminal reaches the launcher only, which
  stops the program gracefully), and death with the parent, even by SIGKILL."""
  parent_pid = os.getppid()
  try:
    os.setsid()
  except OSError:
    pass  # already a session leader
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):
    pass  # not Linux: the coordinator-loss watcher still ends the node
  if os.getppid() != parent_pid:
    os._exit(1)  # the parent died before the death signal was armed


def _redirect_output(fd: int) -> None:
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.close(fd)
  sys.stdout = open(1, "w", buffering=1, closefd=False)
  sys.stderr = open(2, "w", buffering=1, closefd=False)


def main() -> None:
  """Runs a node whose payload comes on stdin (see COMMAND)."""
  payload = sys.stdin.buffer.read()
  run(payload, None)

"""The entry point of a node's process: set up the process, then run the node.

Used two ways: as the target that the launcher's fork server runs in a
freshly forked child (fast: launchpad is already imported there), and as
`python -m launchpad.launch.process_main` for nodes that need their own
interpreter, reading the same payload from standard input.
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

_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class WorkerSpec:
  """What a node's process needs; travels pickled, holding the program secret."""

  program: str
  coordinator: str
  secret: bytes
  node: Node
  env: dict[str, str]


def run(payload: bytes, output_fd: int | None, parent_pid: int) -> None:
  """Runs the node described by `payload` in this process and exits."""
  _detach(parent_pid)
  if output_fd is not None:
    _redirect_output(output_fd)
  spec: WorkerSpec = cloudpickle.loads(payload)
  os.environ.update(spec.env)
  runtime = ProgramRuntime(spec.program, spec.coordinator, spec.secret)
  try:
    worker.run_node(spec.node, runtime)
  finally:
    runtime.close()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # node threads the user left behind must not keep the process


def _detach(parent_pid: int) -> None:
  """Own session (a Ctrl-C in the terminal reaches the launcher only, which
  stops the program gracefully), and death with the parent, even by SIGKILL."""
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
  sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
  sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def main() -> None:
  """`python -m launchpad.launch.process_main`: the payload comes on stdin."""
  payload = sys.stdin.buffer.read()
  run(payload, None, os.getppid())


if __name__ == "__main__":
  main()

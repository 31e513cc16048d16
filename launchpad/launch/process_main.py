"""The entry point of a node's process: set up the process, then run the node.

Used two ways: in a child freshly forked by the launcher's fork server
(`zygote.py`; fast: launchpad is already imported there), and in a fresh
interpreter for nodes that need one, reading the same payload from standard
input. Either way the process exits with status 0 when its node finished
and 1 when it failed, whatever the node raised.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import signal
import sys
import traceback
from typing import NoReturn

import cloudpickle

from launchpad import errors
from launchpad.context import ProgramRuntime
from launchpad.courier import serialization
from launchpad.launch import node_logging, worker
from launchpad.nodes.base import Node
from launchpad.tls import TlsConfig

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# How a launcher starts a node in a fresh interpreter; the payload comes on stdin.
COMMAND = "from launchpad.launch import process_main; process_main.main()"
# The address a node's servers bind and advertise to the other nodes.
HOST_VARIABLE = "LAUNCHPAD_HOST"
# The run directory (node logs) of the launch, for nodes that write results.
RUN_DIR_VARIABLE = "LAUNCHPAD_RUN_DIR"


@dataclasses.dataclass
class WorkerSpec:
  """What a node's process needs; travels pickled, holding the program secret.

  The node travels pickled on its own inside the spec, and is loaded only
  once the node's process can report to the coordinator: a node whose code
  cannot be loaded there (a module missing on the host, an argument whose
  unpickling raises) is that node's failure, reported with its traceback.
  """

  program: str
  coordinator: str
  secret: bytes
  node: Node | bytes  # bytes once it travelled: the node pickled on its own
  env: dict[str, str]
  tls: TlsConfig | None = None
  # The launcher's absl verbosity, if it chose one (-v); None: INFO.
  absl_verbosity: int | None = dataclasses.field(default_factory=node_logging.chosen_verbosity)
  name: str = ""  # the node's name, taken from `node`

  def __post_init__(self):
    if isinstance(self.node, Node):
      self.name = self.node.name

  def __reduce__(self):
    node = self.node if isinstance(self.node, bytes) else serialization.cloudpickle_dumps(self.node)
    fields = (self.program, self.coordinator, self.secret, node, self.env, self.tls)
    return WorkerSpec, (*fields, self.absl_verbosity, self.name)

  def run(self) -> bool:
    """Runs the node in the calling thread, in this process's environment
    plus the spec's, and returns when it ended (its outcome reported): True
    if it finished, False if it failed."""
    os.environ.update(self.env)
    node_logging.show(self.absl_verbosity)
    runtime = self.runtime()
    try:
      node = self.node if isinstance(self.node, Node) else _load_node(self.node)
      # What the imports and the node's unpickling made lives as long as the
      # process: full collections need not walk it again (docs/design.md).
      gc.freeze()
      return worker.run_node(node, runtime)
    except BaseException as e:  # noqa: BLE001 - not loaded, or its end not reported: a failure
      try:
        runtime.control.report(worker.failure_event(self.name, e))
      except errors.LaunchpadError:
        traceback.print_exc()  # the node's output at least tells
      return False
    finally:
      runtime.close()
      sys.stdout.flush()
      sys.stderr.flush()

  def runtime(self) -> ProgramRuntime:
    """The program as this node's process sees it. Its servers bind
    $LAUNCHPAD_HOST, which remote launchers set to an address the other
    hosts reach (default: loopback)."""
    host = os.environ.get(HOST_VARIABLE, "127.0.0.1")
    from launchpad.control.client import ControlClient

    control = ControlClient(self.coordinator, self.secret, tls=self.tls)
    return ProgramRuntime(self.program, control, self.secret, host=host, tls=self.tls)


def _load_node(payload: bytes) -> Node:
  """The node from its pickle, or an error that says why it cannot be loaded here."""
  try:
    return cloudpickle.loads(payload)
  except ImportError as e:
    raise errors.ProgramError(
      f"could not run the node: {type(e).__name__}: {e}; the node's code must be importable "
      "where it runs: install it in that environment (for Ray, in the cluster's image or a "
      "runtime_env working_dir: docs/remote_ray.md), or define it in the launched script, "
      "whose code travels with the node"
    ) from e


def run(payload: bytes, output_fd: int | None) -> NoReturn:
  """Runs the node described by `payload` in this process and exits: status
  0 if the node finished, 1 if it failed. Nothing it raises leaves this
  function (in a forked child, that would unwind into the fork server's
  loop); node threads the user left behind do not keep the process."""
  status = 1
  try:
    _detach()
    if output_fd is not None:
      _redirect_output(output_fd)
    spec: WorkerSpec = cloudpickle.loads(payload)
    status = 0 if spec.run() else 1
  except BaseException:  # noqa: BLE001 - told in the node's output; the process ends here
    traceback.print_exc()
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(status)


def _detach() -> None:
  """Own session (a Ctrl-C in the terminal reaches the launcher only, which
  stops the program gracefully), and death with the parent, even by SIGKILL."""
  try:
    os.setsid()
  except OSError:
    pass  # already a session leader
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  die_with_parent()


def die_with_parent() -> None:
  """SIGKILL when the parent process dies; exits at once if it died already."""
  parent_pid = os.getppid()
  prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != parent_pid:
    os._exit(1)  # the parent died before the death signal was armed


def prctl(option: int, value: int) -> None:
  """Linux's prctl(2); nothing elsewhere (the coordinator-loss watcher still
  ends every node)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(option, value)
  except (OSError, AttributeError):
    pass


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

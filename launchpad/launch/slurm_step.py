"""A node's side of its Slurm job step: find this machine's address, then run the node.

The launcher starts each node with `srun ... python -c COMMAND` and writes
the step's payload on its standard input. The node's servers bind the
address this compute node sends from towards the coordinator, which the
other compute nodes reach too ($LAUNCHPAD_HOST). Without a shared
filesystem the payload also carries the code bundle, unpacked into a
temporary directory that is removed when the node's process has ended.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import signal
import sys
import tempfile
from typing import NoReturn

from launchpad.launch import bundle, process_main, slurm_jobs

COMMAND = "from launchpad.launch import slurm_step; slurm_step.main()"


@dataclasses.dataclass
class StepPayload:
  """What a step reads on its standard input (a pickle of plain values)."""

  spec: bytes  # the node's WorkerSpec, pickled by the launcher
  coordinator_host: str  # the coordinator's host: the node binds the address towards it
  code: bytes | None = None  # the code bundle, when there is no shared filesystem


def main() -> NoReturn:
  payload: StepPayload = pickle.loads(sys.stdin.buffer.read())
  os.environ[process_main.HOST_VARIABLE] = slurm_jobs.source_address(payload.coordinator_host)
  if payload.code is None:
    process_main.run(payload.spec, None)
  _run_with_code(payload.code, payload.spec)


def _run_with_code(code: bytes, spec: bytes) -> NoReturn:
  """Runs the node in a child, with the bundle first on its import path;
  removes the bundle once the child ended, and exits as it did."""
  directory = tempfile.mkdtemp(prefix="launchpad-code-")
  bundle.extract(code, directory)
  sys.path.insert(0, directory)
  os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (directory, os.environ.get("PYTHONPATH")) if p
  )
  pid = os.fork()
  if pid == 0:
    process_main.run(spec, None)
  # Slurm ends a step with SIGTERM: it reaches the node, and the bundle still goes.
  signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
  _, status = os.waitpid(pid, 0)
  shutil.rmtree(directory, ignore_errors=True)
  exit_code = os.waitstatus_to_exitcode(status)
  os._exit(exit_code if exit_code >= 0 else 128 - exit_code)

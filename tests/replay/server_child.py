"""A replay server in a spawned child process, as a program's replay node runs, for the stream tests.

The child runs `target(pipe)`, which serves and answers the parent's
messages over the pipe; the parent reads its answers within a bound and
ends it by SIGKILL, by its pid.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any


class ServerChild:
  """The parent's side: the child's process and its end of the pipe."""

  def __init__(self, target: Callable[[Any], None], timeout: float):
    self.timeout = timeout
    context = multiprocessing.get_context("spawn")
    self.pipe, child_end = context.Pipe()
    self.process = context.Process(target=target, args=(child_end,), daemon=True)
    self.process.start()
    child_end.close()

  def receive(self, waiting_for: str) -> Any:
    """The child's next message; after `timeout` seconds without one, kills
    the child and raises RuntimeError ("the replay server did not WAITING_FOR")."""
    if not self.pipe.poll(self.timeout):
      self.kill()
      raise RuntimeError(f"the replay server did not {waiting_for} within {self.timeout:g} s")
    return self.pipe.recv()

  def kill(self) -> None:
    if self.process.is_alive():
      os.kill(self.process.pid, signal.SIGKILL)
    self.process.join(self.timeout)
    self.pipe.close()

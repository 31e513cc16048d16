"""A server in a child process that may open only a few more file descriptors.

For the tests that a listener keeps accepting once its process ran out of
descriptors: the child builds its server, then limits itself with
`limit_descriptors` and reports its address over the pipe `crowded_child`
hands it as its first argument.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Iterator
from typing import Any


def limit_descriptors(spare: int) -> None:
  """Lets this process open only `spare` more file descriptors."""
  hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
  resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))


@contextlib.contextmanager
def crowded_child(
  target: Callable[..., None], *args: Any, timeout: float, what: str
) -> Iterator[tuple[Any, int]]:
  """Runs `target(pipe, *args)` in a spawned child until the block ends
  (then SIGKILL, by its pid); yields the parent's end of the pipe, once the
  child has sent its first message, and the child's pid."""
  context = multiprocessing.get_context("spawn")
  ours, theirs = context.Pipe()
  process = context.Process(target=target, args=(theirs, *args), daemon=True)
  process.start()
  theirs.close()
  try:
    assert ours.poll(timeout), f"the {what} did not start"
    yield ours, process.pid
  finally:
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout)
    ours.close()

"""Nodes that end in every way a node can, for tests/launch/test_node_exits.py.

python tests/launch/programs/exits.py oom   # a node the kernel's OOM killer ends
"""

from __future__ import annotations

import os
import sys

import launchpad as lp
from tests.launch.programs import nodes

# At most what the memory hog takes: far more than the test's memory limit.
HOG_CHUNKS = 64
HOG_CHUNK_BYTES = 16 << 20


class Boom(BaseException):
  """Not an Exception: what `except Exception` never catches."""


def say(text: str) -> None:
  """One write per line."""
  os.write(1, (text + "\n").encode())


def call_sys_exit(*code: int) -> None:
  say(f"calling sys.exit{code}")
  sys.exit(*code)


def call_os_exit_zero() -> None:
  say("calling os._exit(0)")
  os._exit(0)


def raise_boom() -> None:
  raise Boom("a BaseException subclass from the node's code")


def raise_keyboard_interrupt() -> None:
  raise KeyboardInterrupt


class _ExplodingStream:
  """Standard output whose flush raises Boom: a BaseException that comes
  after the node's code, where nothing of the node catches it."""

  def write(self, text: str) -> int:
    return len(text)

  def flush(self) -> None:
    raise Boom("raised in the node's process after its code returned")


def explode_after_returning() -> None:
  say("returning")
  sys.stdout = _ExplodingStream()


def raise_boom_then_explode() -> None:
  """Fails with Boom; its process then meets another Boom, after the node."""
  sys.stdout = _ExplodingStream()
  raise_boom()


def hog_memory() -> None:
  """Allocates until the kernel's out-of-memory killer ends this process
  (first in line: the highest oom_score_adj)."""
  with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
  say("HOGGING")
  chunks = []
  for _ in range(HOG_CHUNKS):
    chunks.append(b"\x01" * HOG_CHUNK_BYTES)
  say(f"still alive with {len(chunks) * HOG_CHUNK_BYTES >> 20} MiB")


def make_three_nodes(last: lp.PyNode, name: str = "three") -> lp.Program:
  """Two servers, started first, and `last`."""
  program = lp.Program(name)
  for k in range(2):
    program.add_node(lp.CourierNode(nodes.Stoppable, f"server {k}"), label="server")
  program.add_node(last, label="last")
  return program


def main() -> None:
  """Launches a memory hog beside two servers; prints how the hog ended."""
  program = make_three_nodes(lp.PyNode(hog_memory), name="oom")
  controller = lp.launch(program, launch_type="test_mp", terminal="output_to_files")
  try:
    controller.wait(timeout=60.0)
  except lp.NodeFailedError as e:
    say(f"FAILED {e.node}: {e.description}")
  say("FAILURES " + " ".join(record.name for record in controller.failures()))


if __name__ == "__main__":
  main()

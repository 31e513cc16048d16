"""Nodes that start processes of their own, for tests/launch/test_process_tree.py.

Each spawner starts three processes that would outlive it if nothing killed
them: a plain child, a child in a session of its own, and a daemon (started
in a new session by a process that then exits, so it is re-parented). They
sleep for a long but bounded time.

  python tests/launch/programs/tree.py   # launches a spawner, prints SPAWNED pids
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import launchpad as lp

# How long a descendant lives unless killed: far longer than any test waits.
DESCENDANT_SECONDS = 300
# Bound on every wait inside a node.
NODE_TIMEOUT = 30.0
_SLEEP = f"import time; time.sleep({DESCENDANT_SECONDS})"
_DAEMON = (
  "import subprocess, sys; "
  f"p = subprocess.Popen([sys.executable, '-c', {_SLEEP!r}], start_new_session=True, "
  "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
  "print(p.pid)"
)


def say(text: str) -> None:
  """One write per line."""
  os.write(1, (text + "\n").encode())


def start_descendants() -> list[int]:
  """Starts a plain child, a child in a new session and a daemon; their pids."""
  plain = subprocess.Popen([sys.executable, "-c", _SLEEP])
  session = subprocess.Popen([sys.executable, "-c", _SLEEP], start_new_session=True)
  starter = subprocess.run(
    [sys.executable, "-c", _DAEMON], capture_output=True, text=True, timeout=NODE_TIMEOUT
  )
  if starter.returncode != 0:
    raise RuntimeError(f"the daemon's starter failed: {starter.stderr}")
  pids = [plain.pid, session.pid, int(starter.stdout)]
  say("SPAWNED " + " ".join(map(str, pids)))
  return pids


class Gate:
  """Serves `spawn()` while `run()` waits for `release()` (or the stop)."""

  def __init__(self):
    self._released = threading.Event()

  def spawn(self) -> list[int]:
    return start_descendants()

  def release(self) -> None:
    self._released.set()

  def run(self) -> None:
    self._released.wait(NODE_TIMEOUT * 4)


def spawn_and_wait() -> None:
  """Starts descendants, then waits for the program's stop."""
  start_descendants()
  lp.wait_for_stop(NODE_TIMEOUT * 4)


def spawn_and_return() -> None:
  """Starts descendants and ends at once."""
  start_descendants()


def spawn_then_crash(spawner) -> None:
  """Has `spawner` start its descendants, then fails."""
  spawner.with_timeout(NODE_TIMEOUT).spawn()
  raise ValueError("the crasher failed on purpose")


def make_crashing_program() -> lp.Program:
  """A spawner that serves, and a node that makes it spawn, then crashes."""
  program = lp.Program("tree_crash")
  with program.group("spawner"):
    spawner = program.add_node(lp.CourierNode(Gate))
  with program.group("crasher"):
    program.add_node(lp.PyNode(spawn_then_crash, spawner))
  return program


def make_returning_program() -> lp.Program:
  """A node that starts descendants and ends: the program ends with it."""
  program = lp.Program("tree_return")
  with program.group("spawner"):
    program.add_node(lp.PyNode(spawn_and_return))
  return program


def make_waiting_program() -> lp.Program:
  """A node that starts descendants and waits for the stop."""
  program = lp.Program("tree_wait")
  with program.group("spawner"):
    program.add_node(lp.PyNode(spawn_and_wait))
  return program


if __name__ == "__main__":
  controller = lp.launch(make_waiting_program(), launch_type="local_mp")
  controller.wait()

"""Programs for the SSH launcher tests: nodes that say where they run.

Node processes on the "hosts" import this module from the code bundle the
launcher sends, not from the repository: each prints the file it was loaded
from, which the tests check.

  lp launch --mode=ssh --hosts HOSTS tests/launch/programs/remote.py:make_program
"""

from __future__ import annotations

import os
import subprocess

import numpy as np

import launchpad as lp

# Bound on how long a node waits: a test never leaves one behind for long.
LIFETIME_SECONDS = 60.0
ARRAY_ELEMENTS = 1 << 18  # 1 MiB of float32


def say(text: str) -> None:
  """One write per line."""
  os.write(1, (text + "\n").encode())


class Echo:
  """Serves on one host; answers with the array and its own address."""

  def echo(self, array: np.ndarray) -> tuple[np.ndarray, str]:
    return array * 2, os.environ.get("LAUNCHPAD_HOST", "")


def exchange(echo, then_wait: bool = False) -> None:
  """Sends an array to `echo` on the other host and checks the answer; then
  stops the program, or waits for the stop."""
  array = np.arange(ARRAY_ELEMENTS, dtype=np.float32)
  doubled, echo_host = echo.echo(array)
  assert np.array_equal(doubled, array * 2), "the array came back changed"
  say(f"EXCHANGED {doubled.nbytes} bytes with {echo_host} from {os.environ['LAUNCHPAD_HOST']}")
  say(f"MODULE {__file__}")
  if os.path.exists("bin/tool"):  # shipped by the hosts file of some tests
    say(subprocess.run(["bin/tool"], capture_output=True, text=True, check=True).stdout.strip())
  if then_wait:
    lp.wait_for_stop(LIFETIME_SECONDS)
  else:
    lp.stop()


def serve_until_stop() -> None:
  say(f"READY {os.getpid()}")
  lp.wait_for_stop(LIFETIME_SECONDS)


def crash() -> None:
  say("CRASHING")
  raise ValueError("the crash node failed on purpose")


def crash_once_then_exchange(flag: str, echo) -> None:
  """Fails the first time (leaving `flag`); exchanges with `echo` once restarted."""
  if not os.path.exists(flag):
    open(flag, "w").close()
    crash()
  exchange(echo)


def make_program(then_wait: bool = False) -> lp.Program:
  """An echo server on one host, a caller on the other."""
  program = lp.Program("remote_exchange")
  with program.group("echo"):
    echo = program.add_node(lp.CourierNode(Echo))
  with program.group("caller"):
    program.add_node(lp.PyNode(exchange, echo, then_wait))
  return program


def make_exchange_then_wait() -> lp.Program:
  """make_program, with a caller that waits for the stop after its exchange."""
  return make_program(then_wait=True)


def make_waiting_program() -> lp.Program:
  """Two nodes on each host that wait for the stop (a launcher to kill)."""
  program = lp.Program("remote_waiting")
  with program.group("waiter"):
    for _ in range(4):
      program.add_node(lp.PyNode(serve_until_stop))
  return program


def make_crashing_program() -> lp.Program:
  """A server that waits on one host, a node that crashes on the other."""
  program = lp.Program("remote_crash")
  with program.group("server"):
    program.add_node(lp.CourierNode(Echo))
  with program.group("waiter"):
    program.add_node(lp.PyNode(serve_until_stop))
  with program.group("crash"):
    program.add_node(lp.PyNode(crash))
  return program

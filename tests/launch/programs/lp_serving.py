"""Serving nodes for `lp launch` tests: each prints `READY <pid>` once it
serves, prints `STOP_HANDLER` when the program stops, and `EXITING` as it
returns. With --stubborn, the nodes ignore the stop and never return.

  lp launch tests/launch/programs/lp_serving.py -- --num_servers=3
  lp launch tests/launch/programs/lp_serving.py:make_program
"""

import os
import threading

from absl import app, flags

import launchpad as lp

_NUM_SERVERS = flags.DEFINE_integer("num_servers", 3, "How many servers to start.")
_STUBBORN = flags.DEFINE_bool("stubborn", False, "Servers ignore the stop.")
# Bound on how long a node lives: a test never leaves one behind for long.
_LIFETIME_SECONDS = 60.0


def say(text: str) -> None:
  """One write per line."""
  os.write(1, (text + "\n").encode())


class Server:
  def __init__(self, stubborn: bool) -> None:
    self._stubborn = stubborn
    lp.register_stop_handler(lambda: say("STOP_HANDLER"))

  def ping(self) -> str:
    return "pong"

  def run(self) -> None:
    say(f"READY {os.getpid()}")
    if self._stubborn:
      threading.Event().wait(_LIFETIME_SECONDS)  # deaf to the stop
    else:
      lp.wait_for_stop(_LIFETIME_SECONDS)
    say("EXITING")


def make_program() -> lp.Program:
  program = lp.Program("serving")
  with program.group("server"):
    for _ in range(_NUM_SERVERS.value):
      program.add_node(lp.CourierNode(Server, _STUBBORN.value))
  return program


def main(argv: list[str]) -> None:
  del argv
  lp.launch(make_program())


if __name__ == "__main__":
  app.run(main)

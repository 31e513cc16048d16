"""A CourierNode given a threading.Lock: it cannot travel to its process.

lp launch tests/launch/programs/lp_unpicklable.py
lp launch tests/launch/programs/lp_unpicklable.py:make_program
"""

import threading

from absl import app

import launchpad as lp


class Holder:
  def __init__(self, lock) -> None:
    self._lock = lock


def make_program() -> lp.Program:
  program = lp.Program("unpicklable")
  program.add_node(lp.CourierNode(Holder, lock=threading.Lock()), label="holder")
  return program


def main(argv: list[str]) -> None:
  del argv
  lp.launch(make_program())


if __name__ == "__main__":
  app.run(main)

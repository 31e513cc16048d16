"""A CourierNode given a threading.Lock: it cannot travel to its process."""

import threading

import launchpad as lp


class Holder:
  def __init__(self, lock) -> None:
    self._lock = lock


def make_program() -> lp.Program:
  program = lp.Program("unpicklable")
  program.add_node(lp.CourierNode(Holder, lock=threading.Lock()), label="holder")
  return program

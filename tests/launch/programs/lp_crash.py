"""A node that raises, beside one that serves: `lp launch` must exit 1."""

import os

import launchpad as lp


class Service:
  def ping(self) -> str:
    return "pong"


def explode() -> None:
  os.write(1, b"about to explode\n")
  raise ValueError("boom 17")


def make_program() -> lp.Program:
  program = lp.Program("crash")
  program.add_node(lp.CourierNode(Service), label="service")
  program.add_node(lp.PyNode(explode), label="crasher")
  return program

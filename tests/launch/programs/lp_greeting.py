"""A node that prints `GREETING <--greeting>` and ends: for `lp launch` targets.

lp launch tests/launch/programs/lp_greeting.py -- --greeting=hi
lp launch tests/launch/programs/lp_greeting.py:make_program -- --greeting=hi
lp launch programs.lp_greeting:make_program -- --greeting=hi   (PYTHONPATH=tests/launch)
"""

import os

from absl import app, flags

import launchpad as lp

_GREETING = flags.DEFINE_string("greeting", "hello", "What the node prints.")


def greet(greeting: str) -> None:
  os.write(1, f"GREETING {greeting}\n".encode())


def make_program() -> lp.Program:
  program = lp.Program("greeting")
  program.add_node(lp.PyNode(greet, _GREETING.value), label="greeter")
  return program


def not_a_program():
  return 42


def main(argv: list[str]) -> None:
  del argv
  lp.launch(make_program())


if __name__ == "__main__":
  app.run(main)

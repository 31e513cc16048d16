"""The smallest launchpad program: one node that greets and ends.

Run it with:

  python examples/hello_world.py

The node prints its greeting and returns. Once every node of a program has
ended, the program is over and the process exits.
"""

from absl import app

import launchpad as lp


class HelloWorld:
  """A node object: launchpad constructs it in its worker, then calls `run()`."""

  def __init__(self, greeting: str = "Hello World!") -> None:
    self._greeting = greeting

  def run(self) -> None:
    print(self._greeting, flush=True)


def make_program(greeting: str = "Hello World!") -> lp.Program:
  program = lp.Program("hello_world")
  program.add_node(lp.PyClassNode(HelloWorld, greeting), label="hello_printer")
  return program


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  lp.launch(make_program())
  # lp.launch returns at once; the process stays alive until the program ends.


if __name__ == "__main__":
  app.run(main)

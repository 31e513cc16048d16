"""Many nodes printing many lines at once, each line in two writes, plus one
line longer than a socket read: the launcher must keep every line whole.

Line k of printer i reads `printer i line k xxx...`; its long line reads
`printer i long yyy...` (--long_line characters of y).
"""

import os

from absl import flags

import launchpad as lp

_NUM_PRINTERS = flags.DEFINE_integer("num_printers", 6, "How many printers.")
_NUM_LINES = flags.DEFINE_integer("num_lines", 300, "Lines per printer.")
_LONG_LINE = flags.DEFINE_integer("long_line", 100_000, "Length of the long line.")


def write(text: str) -> None:
  data = text.encode()
  while data:
    data = data[os.write(1, data) :]


def printer(index: int, num_lines: int, long_line: int) -> None:
  for k in range(num_lines):
    write(f"printer {index} line {k} ")  # a partial line first
    write("x" * (k % 50 + 1) + "\n")
    if k == num_lines // 2:
      write(f"printer {index} long {'y' * long_line}\n")


def make_program() -> lp.Program:
  program = lp.Program("printers")
  with program.group("printer"):
    for index in range(_NUM_PRINTERS.value):
      program.add_node(lp.PyNode(printer, index, _NUM_LINES.value, _LONG_LINE.value))
  return program

"""A program of N nodes that end at once: `python many_short_nodes.py N`.

Prints LAUNCHED when lp.launch has returned, then ENDED and what
controller.wait() returned. Used by test_processes.py as a subprocess, so a
launcher that hangs can be killed.
"""

import sys

import launchpad as lp


def short() -> None:
  """Ends at once."""


def main() -> None:
  program = lp.Program("many_short")
  for _ in range(int(sys.argv[1])):
    program.add_node(lp.PyNode(short), label="short")
  controller = lp.launch(program, launch_type="test_mp", terminal="output_to_files")
  print("LAUNCHED", flush=True)
  print("ENDED", controller.wait(timeout=30.0), flush=True)


if __name__ == "__main__":
  main()

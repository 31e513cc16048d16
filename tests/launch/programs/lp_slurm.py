"""Programs that tests/launch/test_slurm.py launches with `lp launch --mode=slurm`."""

import os

import launchpad as lp


def idle(index: int) -> None:
  """Says it is up, waits for the stop, says it saw it."""
  os.write(1, f"idle {index} up\n".encode())
  lp.wait_for_stop()
  os.write(1, f"idle {index} stopped\n".encode())


def make_idle() -> lp.Program:
  """Two nodes that run until the program is stopped."""
  program = lp.Program("idle")
  with program.group("idler"):
    for index in range(2):
      program.add_node(lp.PyNode(idle, index))
  return program

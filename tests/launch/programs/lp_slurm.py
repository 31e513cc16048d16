"""Programs that tests/launch/test_slurm.py launches with `lp launch --mode=slurm`.

  lp launch --mode=slurm tests/launch/programs/lp_slurm.py:make_idle
  lp launch --mode=slurm --preempt-signal=USR1@60 tests/launch/programs/lp_slurm.py \
    -- --time_limit=1     # the idlers' job ends after 1 minute
"""

import os

from absl import app, flags

import launchpad as lp

_TIME_LIMIT = flags.DEFINE_integer(
  "time_limit", None, "The idlers' Slurm time limit in minutes; default: the partition's."
)


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


def main(argv: list[str]) -> None:
  del argv
  lp.launch(make_idle(), local_resources={"idler": lp.SlurmResources(time=_TIME_LIMIT.value)})


if __name__ == "__main__":
  app.run(main)

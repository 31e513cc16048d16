"""A node that logs through absl, for tests/launch/test_absl_logging.py.

python tests/launch/programs/absl_logs.py LAUNCH_TYPE        # a plain script
python tests/launch/programs/absl_logs.py app LAUNCH_TYPE [-v N]  # under app.run
"""

from __future__ import annotations

import sys

from absl import app, logging

import launchpad as lp


def log_lines(tag: str = "from the node") -> None:
  """One absl line at each of DEBUG, INFO and WARNING."""
  logging.debug("absl debug %s", tag)
  logging.info("absl info %s", tag)
  logging.warning("absl warning %s", tag)


def make_program() -> lp.Program:
  program = lp.Program("absl_logs")
  program.add_node(lp.PyNode(log_lines), label="talker")
  return program


def run(launch_type: str) -> None:
  controller = lp.launch(make_program(), launch_type=launch_type)
  controller.wait(timeout=60.0)


if __name__ == "__main__":
  if sys.argv[1] == "app":
    app.run(lambda argv: run(argv[2]))
  else:
    run(sys.argv[1])

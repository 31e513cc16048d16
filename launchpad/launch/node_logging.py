"""absl logging of nodes, shown as an absl program shows it.

Node code (Acme's loggers among it) logs through `absl.logging`, and absl
shows INFO lines only once `absl.app.run` has set it up, which no node
process calls: without this, a node's `logging.info(...)` went nowhere. So
every node's process, and the launcher's own for the threads launcher,
writes absl's records in absl's format (`I1201 10:00:00.123456 4242
file.py:12] message`) to its standard error, which the process launchers
route to the terminal and to the node's log, at INFO and above unless a
verbosity was chosen (`-v`/`--verbosity` on the launcher's command line, or
`logging.set_verbosity`).
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from absl import logging as absl_logging


def chosen_verbosity() -> int | None:
  """The absl verbosity this process chose (its command line's -v, or a
  `logging.set_verbosity` call), None when it kept absl's default."""
  flag = flags.FLAGS["verbosity"]
  return None if flag.using_default_value else flag.value


def show(verbosity: int | None = None) -> None:
  """Shows absl's records on standard error, at `verbosity`, else at the
  verbosity this process chose, else at INFO.

  A process whose logging is set up already (a handler on the root logger:
  absl's own under `app.run`, or the user's) keeps its handlers; absl's
  records reach them.
  """
  if verbosity is not None:
    absl_logging.set_verbosity(verbosity)
  elif chosen_verbosity() is None:
    absl_logging.set_verbosity(absl_logging.INFO)
  if not logging.root.handlers:
    handler = _StderrHandler()
    handler.setFormatter(absl_logging.PythonFormatter())
    logging.root.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is when a record comes (a node process
  redirects it after the handler is made)."""

  def __init__(self):
    logging.Handler.__init__(self)

  @property
  def stream(self):
    return sys.stderr

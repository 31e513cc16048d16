"""Ctrl-C and SIGTERM for launchers run from a main thread.

The first signal stops the program gracefully (stop handlers run,
`wait_for_stop()` returns everywhere, the grace period applies); a second
one ends it at once. Once the program is over, signals behave as before.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from launchpad.control.coordinator import Coordinator
  from launchpad.launch.controller import Controller

# Exit status after a second signal: the shell convention for death by signal.
FORCED_EXIT = 128


def install(
  controller: Controller, coordinator: Coordinator, on_second: Callable[[], None] = lambda: None
) -> None:
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

  def handler(signum, frame):
    if controller.done:
      signal.signal(signum, previous[signum])
      signal.raise_signal(signum)
    elif coordinator.stop_reason is not None:
      on_second()
      os._exit(FORCED_EXIT + signum)
    else:
      reason = f"{signal.Signals(signum).name} received; again to end at once"
      coordinator.request_stop(reason, signum)

  for sig in previous:
    signal.signal(sig, handler)

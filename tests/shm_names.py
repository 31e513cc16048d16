"""What /dev/shm names, for tests that check nothing named is left behind."""

from __future__ import annotations

import os


def shm_names() -> set[str]:
  """/dev/shm's names, less POSIX semaphores (sem.*: multiprocessing's, made by
  any process of the machine, a concurrent test run's among them; launchpad
  makes no names at all)."""
  return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}

"""Node classes and functions run by tests/launch/test_processes.py.

They live in a module of their own (not the test module) so that node
processes, which import them by reference, do not import pytest or the tests.
Every line a node prints is written with one call, so lines stay whole.
"""

from __future__ import annotations

import gc
import os
import pathlib
import sys
import threading

import launchpad as lp

# Bound on every wait inside a node: a test never hangs on a node.
NODE_TIMEOUT = 20.0


def say(text: str) -> None:
  """Prints one line in a single write."""
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


def append_line(path: str, text: str) -> int:
  """Appends `text` as a line of file `path`; returns the number of lines."""
  with open(path, "a") as f:
    f.write(text + "\n")
  return len(pathlib.Path(path).read_text().splitlines())


class Producer:
  """Serves `work`; reports where it runs."""

  def __init__(self, factor: int):
    self._factor = factor
    lp.register_stop_handler(lambda: say(f"producer {factor} stop handler"))
    say(f"producer {factor} ready")

  def work(self, x: int) -> int:
    return x * self._factor

  def pid(self) -> int:
    return os.getpid()

  def frozen(self) -> int:
    """How many objects this process's collector no longer walks."""
    return gc.get_freeze_count()

  def ppid(self) -> int:
    return os.getppid()

  def env(self, key: str) -> str | None:
    return os.environ.get(key)

  def argv(self) -> list[str]:
    return list(sys.argv)

  def executable(self) -> str:
    return sys.executable

  def thread_names(self) -> list[str]:
    return sorted(t.name for t in threading.enumerate())


class Consumer:
  """Calls every producer it was given."""

  def __init__(self, producers: list):
    self._producers = [p.with_timeout(NODE_TIMEOUT) for p in producers]

  def gather(self, x: int) -> list[int]:
    futures = [p.futures.work(x) for p in self._producers]
    return [f.result(timeout=NODE_TIMEOUT) for f in futures]

  def producer_pids(self) -> list[int]:
    return [p.pid() for p in self._producers]

  def pid(self) -> int:
    return os.getpid()


def raise_value_error() -> None:
  say("about to raise")
  raise ValueError("bad value 1234")


def exit_with_status(status: int) -> None:
  say(f"exiting with status {status}")
  os._exit(status)


def print_and_return(text: str) -> None:
  say(text)


class Flaky:
  """Records each start in `marker` (one line per process); `crash()` kills
  the process, as a segfault or an out-of-memory kill would."""

  def __init__(self, marker: str):
    self._starts = append_line(marker, str(os.getpid()))
    say(f"flaky start {self._starts} pid {os.getpid()}")

  def pid(self) -> int:
    return os.getpid()

  def starts(self) -> int:
    return self._starts

  def crash(self, status: int) -> None:
    sys.stdout.flush()
    os._exit(status)


class Caller:
  """Holds a client of another node and calls it on request."""

  def __init__(self, target):
    self._target = target.with_timeout(NODE_TIMEOUT)

  def target_pid(self) -> int:
    return self._target.pid()


def crash_every_time(marker: str) -> None:
  """Fails on every start; `marker` counts the starts."""
  starts = append_line(marker, str(os.getpid()))
  say(f"crash start {starts}")
  os._exit(3)


class Gate:
  """Serves while `run()` waits for `release()`; then `run()` returns."""

  def __init__(self):
    self._released = threading.Event()

  def pid(self) -> int:
    return os.getpid()

  def release(self) -> None:
    self._released.set()

  def run(self) -> None:
    if self._released.wait(NODE_TIMEOUT):
      say("gate released")


class Stoppable:
  """Serves until the stop; its stop handler and its end print a line."""

  def __init__(self, name: str):
    self._name = name
    lp.register_stop_handler(lambda: say(f"{name} stop handler"))

  def pid(self) -> int:
    return os.getpid()

  def run(self) -> None:
    say(f"{self._name} ready")
    lp.wait_for_stop(NODE_TIMEOUT * 3)
    say(f"{self._name} ends")


def stop_once_served(service) -> None:
  """Stops the program once `service` serves (its constructor has run)."""
  service.pid()
  lp.stop()


def quick() -> None:
  """A node that ends at once."""

"""One trial of a sweep: its program built by the factory, launched, watched, stopped.

Each trial runs in a thread of the sweep's process: it calls the factory
with the trial's parameters, launches the program it returns with the
sweep's launcher (`lp.launch`, so any launcher: threads, processes, SSH
hosts, Ray), and hands what the program's nodes report (`lp.report`, which
reaches the launching process over the control plane) to the sweep as
events on a queue. The sweep alone talks to the study; a trial only runs
its program, and stops it gracefully (`controller.stop()`) when asked to,
when the pruner decides, or when the sweep is interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from launchpad import errors, private_files
from launchpad.control.metrics import Metrics
from launchpad.program import Program

log = logging.getLogger(__name__)

# How often a trial's thread looks for a request to stop while it waits for
# reports (a report, or the end of its nodes, wakes it at once).
SLICE_SECONDS = 0.1
# How long a trial whose nodes have ended waits for its processes to exit.
TEARDOWN_SECONDS = 60.0
PARAMS_FILE = "params.json"
ERROR_FILE = "error.txt"

# How a trial's program ended.
ENDED = "ended"  # by itself, no node failed
FAILED = "failed"  # the factory or the launch raised, or a node failed
STOPPED = "stopped"  # stopped on the sweep's request (`TrialRun.stop`)


@dataclasses.dataclass(frozen=True)
class Reported:
  """The trial's nodes reported `metrics`."""

  run: TrialRun
  metrics: list[Metrics]


@dataclasses.dataclass(frozen=True)
class Ended:
  """The trial's program is over: `how` is ENDED, FAILED or STOPPED; `error`
  the traceback of a failure."""

  run: TrialRun
  how: str
  error: str = ""


class TrialRun:
  """Runs trial `number`'s program in a thread of its own; events go to `events`.

  Args:
    number: the trial's number in the study.
    kwargs: the factory's arguments (the trial's parameters, and its seed).
    factory: makes the program.
    directory: the trial's directory (params.json, error.txt, and the run
      directory of launchers that keep one there).
    launch: lp.launch, given the program.
    events: where Reported and Ended events go.
    timeout: seconds the trial may run before it is stopped (None: no limit).
  """

  def __init__(
    self,
    number: int,
    kwargs: dict[str, Any],
    factory: Callable[..., Any],
    directory: pathlib.Path,
    launch: Callable[[Program], Any],
    events: queue.Queue,
    timeout: float | None = None,
  ):
    self.number = number
    self.kwargs = kwargs
    self.directory = directory
    self.run_dir: pathlib.Path | None = None
    # time.time() of each moment of the trial: launched, reported (the first
    # report), last_report, stop (the sweep asked it to stop), ended.
    self.times: dict[str, float] = {}
    self.stop_reason: str | None = None
    self._factory = factory
    self._launch = launch
    self._events = events
    self._timeout = timeout
    self._stop_requested = threading.Event()
    self._thread = threading.Thread(target=self._run, name=f"trial-{number}", daemon=True)

  def start(self) -> None:
    private_files.make_directory(self.directory)
    private_files.write(self.directory / PARAMS_FILE, json.dumps(self.kwargs, indent=2) + "\n")
    self._thread.start()

  def stop(self, reason: str) -> None:
    """Asks the program to stop gracefully (it gets its grace period); the
    first reason given is kept."""
    if self.stop_reason is None:
      self.stop_reason = reason
      self.times["stop"] = time.time()
    self._stop_requested.set()

  def join(self, timeout: float) -> bool:
    """Waits for the trial's thread, which ends once its program's processes
    have exited; True if it has."""
    self._thread.join(timeout)
    return not self._thread.is_alive()

  def _run(self) -> None:
    self.times["launched"] = time.time()
    try:
      controller = self._start_program()
    except Exception as e:  # noqa: BLE001 - the user's factory, or its program's launch
      self._end(FAILED, _error_text(f"trial {self.number} could not start", e))
      return
    self.run_dir = controller.run_dir
    try:
      how = self._watch(controller)
    except Exception as e:  # noqa: BLE001 - a stop that did not end the program, say
      self._end(FAILED, _error_text(f"trial {self.number}'s program did not end", e))
      return
    self._end(how, _failure_text(controller) if how == FAILED else "")
    # Its nodes have ended: the next trial may start while its processes exit.
    if not controller.wait(timeout=TEARDOWN_SECONDS, raise_error=False):
      log.warning("trial %d: its program did not end within %g s", self.number, TEARDOWN_SECONDS)

  def _start_program(self) -> Any:
    program = self._factory(**self.kwargs)
    if not isinstance(program, Program):
      raise TypeError(
        f"the factory returned {program!r} for trial {self.number}, not a lp.Program; it "
        "must build and return the trial's program."
      )
    return self._launch(program)

  def _watch(self, controller: Any) -> str:
    """Hands on the program's reports until its nodes have all ended; how it ended.

    A stop runs in a thread of its own (controller.stop() waits for the
    program's processes to exit), so the end is told as soon as the nodes end.
    """
    deadline = None if self._timeout is None else time.monotonic() + self._timeout
    after = 0
    stopper: threading.Thread | None = None
    stop_failures: list[Exception] = []
    while True:
      reports = controller.metrics(after, timeout=SLICE_SECONDS)
      if reports:
        after = reports[-1].number + 1
        self.times.setdefault("reported", time.time())
        self.times["last_report"] = time.time()
        self._events.put(Reported(self, reports))
        continue
      if controller.nodes_ended() or controller.done:
        break
      if stop_failures:
        raise stop_failures[0]
      if deadline is not None and time.monotonic() >= deadline and self.stop_reason is None:
        self.stop(f"it ran longer than its {self._timeout:g} s")
      if self._stop_requested.is_set() and stopper is None:
        stopper = threading.Thread(
          target=_stop, args=(controller, stop_failures), name=f"trial-{self.number}-stop"
        )
        stopper.start()
    if self.stop_reason is not None:
      return STOPPED
    return FAILED if controller.failures() else ENDED

  def _end(self, how: str, error: str) -> None:
    self.times["ended"] = time.time()
    if error:
      try:
        private_files.write(self.directory / ERROR_FILE, error)
      except OSError:
        pass  # the sweep still records the error in its study
    self._events.put(Ended(self, how, error))


def _stop(controller: Any, failures: list[Exception]) -> None:
  """Stops the program gracefully (its grace period, then force); what that
  raises (nodes that even a kill does not end) goes to `failures`."""
  try:
    controller.stop()
  except Exception as e:  # noqa: BLE001 - handed to the trial's thread
    failures.append(e)


def _error_text(what: str, error: Exception) -> str:
  """A line saying what went wrong, then the traceback."""
  return f"{what}: {type(error).__name__}: {error}\n" + "".join(traceback.format_exception(error))


def _failure_text(controller: Any) -> str:
  """The first failed node's name, description and traceback."""
  failed = controller.failures()
  if not failed:
    return ""
  first = failed[0]
  return str(errors.NodeFailedError(first.name, first.description, first.traceback))

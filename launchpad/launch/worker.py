"""Runs one node inside a worker and tells the coordinator how it went.

The same code runs a node in a thread of the launcher's process, in a
process of its own, on a remote host or in a Ray actor.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from launchpad import context, errors
from launchpad.control import control_pb2, failures
from launchpad.nodes.base import Node

log = logging.getLogger(__name__)

# Once the program is stopping, launchpad's own errors (calls cut short,
# servers and replay tables closed) are the stop's doing, not failures.
_STOP_ERRORS = errors.LaunchpadError
# What stop handlers raise into node threads to end them (Acme's
# runtime_terminator raises SystemExit with PyThreadState_SetAsyncExc).
_STOP_EXITS = (SystemExit, KeyboardInterrupt)
# A node in another process may see the stop's effects (a closed server)
# before its own process hears of the stop: it gets this long to arrive.
STOP_NEWS_SECONDS = 2.0
# How long a node's thread waits for the report of its end to be sent.
REPORT_SECONDS = 30.0


def run_node(node: Node, runtime: context.ProgramRuntime) -> bool:
  """Runs `node` in the calling thread and reports STARTED, then FINISHED or
  FAILED; True if the node returned, or ended with sys.exit() or
  sys.exit(0) (a finished node, as for a process exiting with status 0).

  A node that ends because the program is stopping has stopped, not failed
  (`stopped_by_the_stop`). How it ended is reported from another thread: a
  stop handler may raise an exception into this thread at any moment, and
  it must not land inside a control-plane call.
  """
  context.set_node(context.NodeContext(node.name, runtime))
  event = control_pb2.NodeEvent
  try:
    _report(runtime, event(node=node.name, kind=event.STARTED))
    ending = _Ending(node.name, runtime)
    try:
      node.run(runtime)
    except BaseException as e:  # noqa: BLE001 - every way a node can end is reported
      ending.error = e  # nothing more here: a stop handler's exception may come at any time
    try:
      ending.wait_reported()
    except BaseException:  # noqa: BLE001 - raised into this thread by a stop handler
      ending.wait_reported()
    return ending.error is None or _clean_exit(ending.error)
  finally:
    context.set_node(None)


def stopped_by_the_stop(error: BaseException, runtime: context.ProgramRuntime) -> bool:
  """Whether `error`, which ended a node, is the program's stop at work.

  It is once the stop has begun, for SystemExit and KeyboardInterrupt, and
  for exceptions without arguments once this process's stop handlers have
  started (an exception raised into a thread with PyThreadState_SetAsyncExc
  is its class called without arguments). Launchpad's own errors (a call
  cut short, a closed table) count if the stop arrives within
  STOP_NEWS_SECONDS. Anything else is a failure, stop or not.
  """
  if isinstance(error, _STOP_ERRORS):
    return runtime.stop_event.wait(STOP_NEWS_SECONDS)
  if not runtime.stop_event.is_set():
    return False
  return isinstance(error, _STOP_EXITS) or (not error.args and runtime.stop_handlers_started)


def report_finished(name: str, runtime: context.ProgramRuntime) -> None:
  """Reports node `name` FINISHED (a colocation that ends before its worker does)."""
  _report(runtime, control_pb2.NodeEvent(node=name, kind=control_pb2.NodeEvent.FINISHED))


class _Ending:
  """Reports how a node ended, from a thread started before the node runs:
  the node's own thread may receive an exception from a stop handler at any
  moment, and it must not land inside a control-plane call."""

  def __init__(self, name: str, runtime: context.ProgramRuntime):
    self.error: BaseException | None = None
    self._name = name
    self._runtime = runtime
    self._ended = threading.Event()
    self._reporter = threading.Thread(target=self._report, name=f"{name}-report", daemon=True)
    self._reporter.start()

  def wait_reported(self) -> None:
    """Says the node has ended (with `error`, if any) and waits up to
    REPORT_SECONDS (and STOP_NEWS_SECONDS) for the report; an exception raised
    into this thread meanwhile interrupts one wait, not the report."""
    deadline = time.monotonic() + STOP_NEWS_SECONDS + REPORT_SECONDS
    while True:
      try:
        self._ended.set()
        self._reporter.join(max(0.0, deadline - time.monotonic()))
        if not self._reporter.is_alive():
          return
        if time.monotonic() >= deadline:
          log.error(
            "node %s: the report of its end was not sent within %g s", self._name, REPORT_SECONDS
          )
          return
      except BaseException:  # noqa: BLE001 - raised into this thread by a stop handler
        pass

  def _report(self) -> None:
    self._ended.wait()
    _report_end(self._name, self._runtime, self.error)


def _clean_exit(error: BaseException) -> bool:
  """sys.exit() or sys.exit(0): a finished node, as for a process exiting with status 0."""
  return isinstance(error, SystemExit) and error.code in (None, 0)


def _report_end(name: str, runtime: context.ProgramRuntime, ended: BaseException | None) -> None:
  event = control_pb2.NodeEvent
  if ended is None or _clean_exit(ended):
    _report(runtime, event(node=name, kind=event.FINISHED))
  elif stopped_by_the_stop(ended, runtime):
    if not isinstance(ended, (_STOP_ERRORS, *_STOP_EXITS)):
      log.warning(
        "node %s ended by %r during the stop: counted as stopped", name, ended, exc_info=ended
      )
    _report(runtime, event(node=name, kind=event.FINISHED))
  else:
    _report(runtime, failure_event(name, ended))


def failure_event(name: str, error: BaseException) -> control_pb2.NodeEvent:
  """A FAILED event carrying the exception as data (the launcher unpickles
  nothing it receives)."""
  return control_pb2.NodeEvent(
    node=name,
    kind=control_pb2.NodeEvent.FAILED,
    description=f"{type(error).__name__}: {failures.message(error)}",
    traceback="".join(traceback.format_exception(error)),
    exception=failures.describe(error),
  )


def _report(runtime: context.ProgramRuntime, event: control_pb2.NodeEvent) -> None:
  try:
    runtime.control.report(event)
  except errors.LaunchpadError as e:
    log.error(
      "node %s could not report to the coordinator (%s): %s", event.node, e, event.traceback
    )

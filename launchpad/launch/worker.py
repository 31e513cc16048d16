"""Runs one node inside a worker and tells the coordinator how it went.

The same code runs a node in a thread of the launcher's process, in a
process of its own, on a remote host or in a Ray actor.
"""

from __future__ import annotations

import logging
import traceback

from launchpad import context, errors
from launchpad.control import control_pb2
from launchpad.courier import serialization
from launchpad.nodes.base import Node

log = logging.getLogger(__name__)

# Once the program is stopping, launchpad's own errors (calls cut short,
# servers and replay tables closed) are the stop's doing, not failures.
_STOP_ERRORS = errors.LaunchpadError
# A node in another process may see the stop's effects (a closed server)
# before its own process hears of the stop: it gets this long to arrive.
STOP_NEWS_SECONDS = 2.0


def run_node(node: Node, runtime: context.ProgramRuntime) -> None:
  """Runs `node` in the calling thread and reports STARTED, then FINISHED or FAILED."""
  context.set_node(context.NodeContext(node.name, runtime))
  event = control_pb2.NodeEvent
  try:
    _report(runtime, event(node=node.name, kind=event.STARTED))
    try:
      node.run(runtime)
    except BaseException as e:  # noqa: BLE001 - every way a node can end is reported
      if isinstance(e, _STOP_ERRORS) and runtime.stop_event.wait(STOP_NEWS_SECONDS):
        _report(runtime, event(node=node.name, kind=event.FINISHED))
      else:
        _report(runtime, failure_event(node.name, e))
    else:
      _report(runtime, event(node=node.name, kind=event.FINISHED))
  finally:
    context.set_node(None)


def failure_event(name: str, error: BaseException) -> control_pb2.NodeEvent:
  """A FAILED event carrying the exception, pickled when it can be."""
  try:
    pickled = serialization.dumps(error, "exception", out_of_band=False)[0]
  except errors.SerializationError:
    pickled = b""
  return control_pb2.NodeEvent(
    node=name,
    kind=control_pb2.NodeEvent.FAILED,
    description=f"{type(error).__name__}: {error}",
    traceback="".join(traceback.format_exception(error)),
    error=pickled,
  )


def _report(runtime: context.ProgramRuntime, event: control_pb2.NodeEvent) -> None:
  try:
    runtime.control.report(event)
  except errors.LaunchpadError as e:
    log.error(
      "node %s could not report to the coordinator (%s): %s", event.node, e, event.traceback
    )

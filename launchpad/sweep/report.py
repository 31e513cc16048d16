"""`lp.report(step=..., **metrics)`: a node tells the launcher how it is doing.

The report travels over the control plane (ReportMetrics) to the
coordinator, which runs in the launching process whatever the launcher:
threads, processes, SSH hosts, Ray actors. There a sweep reads it to prune
trials; any launch keeps the latest report of each node (`lp status` and
`lp top` show it) and, when it has a run directory, appends every report to
its metrics.jsonl.

A report never fails the node: outside a launched program it is dropped
with a warning, and a coordinator that cannot be reached is logged. Only a
call that is wrong in itself (a step that is not a whole number, a metric
that is not a number) raises, naming the argument.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time

from launchpad import context, errors
from launchpad.control import control_pb2

log = logging.getLogger(__name__)


def report(step: int, **metrics: float) -> None:
  """Reports `metrics` (numbers, by name) at `step` (a whole number, 0 or more:
  an environment step, an epoch, a learner step), from the calling node.

  Example: `lp.report(step=env_steps, mean_return=183.5, loss=0.02)`.
  Reports go to the program's launcher synchronously (one small control-plane
  call, about a millisecond), so call it every so often, not on every step
  of a hot loop.
  """
  if isinstance(step, bool) or not isinstance(step, numbers.Integral):
    raise TypeError(f"lp.report: step must be a whole number (an int), got {step!r}.")
  if step < 0:
    raise ValueError(f"lp.report: step must be 0 or more, got {step}.")
  if not metrics:
    raise TypeError("lp.report: give at least one metric, e.g. lp.report(step=100, loss=0.25).")
  values = {}
  for name, value in metrics.items():
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(
        f"lp.report: metric {name!r} is {value!r}; metrics are numbers (int, float, numpy scalars)."
      )
    values[name] = float(value)
  try:
    runtime = context.running_runtime()
  except errors.LaunchpadError as e:
    _warn_once("ambiguous", f"lp.report: the metrics are dropped: {e}")
    return
  if runtime is None:
    _warn_once(
      "outside",
      "lp.report outside a launched program: the metrics are dropped (they go to the "
      "program's launcher when called in a node).",
    )
    return
  node = context.current_node()
  message = control_pb2.MetricsReport(
    node=node.name if node is not None else "", step=int(step), values=values, time=time.time()
  )
  try:
    runtime.control.report_metrics(message)
  except (errors.LaunchpadError, KeyError) as e:
    _warn_once(
      "unreachable", f"lp.report: the coordinator did not take the metrics ({e}); they are dropped."
    )


def _warn_once(kind: str, message: str) -> None:
  """Logs `message` the first time something of `kind` goes wrong in this process."""
  with _warned_lock:
    if kind in _warned:
      return
    _warned.add(kind)
  log.warning(message)


# The kinds of trouble logged already: a node reporting in a loop warns once.
_warned: set[str] = set()
_warned_lock = threading.Lock()

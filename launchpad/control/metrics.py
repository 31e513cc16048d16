"""What the coordinator keeps of the metrics nodes report (`lp.report`).

Reports travel over the control plane (`ReportMetrics`), so they reach the
launcher from every launcher's nodes alike. The coordinator keeps them in a
`MetricsLog`: the latest report of each node (`lp status` shows it) and the
last MAX_KEPT reports in order, which the launching process reads with
`controller.metrics()` (a sweep decides on pruning from them) and which
`MetricsFile` appends to the run directory's metrics.jsonl.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import pathlib
import threading
from collections.abc import Callable

from launchpad import private_files

log = logging.getLogger(__name__)

# Reports kept in order for controller.metrics(); older ones are dropped (the
# run directory's metrics.jsonl keeps them all).
MAX_KEPT = 100_000
FILE_NAME = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class Metrics:
  """One report: `values` by name at `step`, from node `node` ('' when the
  reporting thread belonged to no node the coordinator could tell), at
  wall-clock `time` on the reporter's host; `number` is its place in the
  program's reports, from 0."""

  node: str
  step: int
  values: dict[str, float]
  time: float
  number: int = 0

  def as_json(self) -> str:
    """One line of metrics.jsonl; NaN and infinities as the strings JSON lacks."""
    values = {k: v if math.isfinite(v) else str(v) for k, v in self.values.items()}
    return json.dumps({"node": self.node, "step": self.step, "time": self.time, **values})


class MetricsLog:
  """The reports of one program, in the order they came; thread-safe.

  Reports are numbered from 0 in arrival order; `since(n)` returns those
  numbered n and after that are still kept: a reader asks next for the
  number after the last one it got.
  """

  def __init__(self, changed: threading.Condition | None = None, max_kept: int = MAX_KEPT):
    """`changed`: the condition to notify of each report, and to wait on (the
    coordinator's, so that waiters also wake when nodes change state)."""
    self._kept: collections.deque[Metrics] = collections.deque(maxlen=max_kept)
    self._count = 0  # reports received; the next one is numbered this
    self._latest: dict[str, Metrics] = {}
    self._closed = False
    self._changed = changed or threading.Condition()

  def add(self, metrics: Metrics) -> Metrics:
    """Keeps `metrics`; returns it numbered."""
    with self._changed:
      metrics = dataclasses.replace(metrics, number=self._count)
      self._kept.append(metrics)
      self._count += 1
      self._latest[metrics.node] = metrics
      self._changed.notify_all()
    return metrics

  @property
  def count(self) -> int:
    """How many reports came so far."""
    return self._count

  def latest(self, node: str) -> Metrics | None:
    """The last report of `node`, if it reported."""
    with self._changed:
      return self._latest.get(node)

  def since(
    self,
    first: int,
    timeout: float | None = 0.0,
    until: Callable[[], bool] = lambda: False,
  ) -> list[Metrics]:
    """The reports numbered `first` and after, waiting up to `timeout` seconds
    (None: no limit) for one when there is none yet, or until the log is
    closed or `until()` holds (checked on every change of the condition).
    Reports dropped to keep MAX_KEPT are skipped."""
    with self._changed:
      self._changed.wait_for(lambda: self._count > first or self._closed or until(), timeout)
      new = self._count - first
      if new <= 0:
        return []
      kept = len(self._kept)
      # Indexing a deque near its end is cheap; a copy of it all would not be.
      return [self._kept[i] for i in range(kept - min(new, kept), kept)]

  def close(self) -> None:
    """The program has ended: no report will come, `since` waits no more."""
    with self._changed:
      self._closed = True
      self._changed.notify_all()


class MetricsFile:
  """Appends every report, one JSON object a line, to `directory`/metrics.jsonl
  (a private file, as the run directory's others)."""

  def __init__(self, directory: pathlib.Path):
    self.path = directory / FILE_NAME
    self._lock = threading.Lock()
    self._failed = False

  def write(self, metrics: Metrics) -> None:
    """Adds one line; a file that cannot be written is logged once, not raised:
    a node's report must not fail for it."""
    line = (metrics.as_json() + "\n").encode()
    with self._lock:
      try:
        with private_files.open_append(self.path) as f:
          f.write(line)
      except OSError as e:
        if not self._failed:
          self._failed = True
          log.error(
            "cannot record metrics in %s (%s); lp status still shows the latest", self.path, e
          )

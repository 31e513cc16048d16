"""What a process of a running program reports about itself, once a second.

Each process (each `ProgramRuntime`) has a `Reporter`. Every REPORT_SECONDS
it measures its own process (CPU and resident memory: the process measures
itself, so this works wherever the launcher put it, on this host or
another), reads the counters of the nodes it runs (requests handled and
failed by their courier servers, replay table sizes and counters) and sends
one `ProcessStats` message to the coordinator, which hands the latest to
`lp status --watch`. Several nodes in one process (threads, colocation)
share the process's CPU and memory but keep counters of their own.

The counters themselves are plain integers incremented where the work is
done (`courier.server.Server.calls`); reading them here, once a second, is
all the cost they add. Rates are computed here, between two reports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from launchpad import errors
from launchpad.control import control_pb2

if TYPE_CHECKING:
  from launchpad.control.client import Control
  from launchpad.courier.server import Server

log = logging.getLogger(__name__)

REPORT_SECONDS = 1.0

# Table name -> size, max_size, num_inserts, num_samples (ReplayService.table_stats).
TableInfo = Callable[[], Mapping[str, Mapping[str, Any]]]


@dataclasses.dataclass
class _Tracked:
  """A node of this process whose counters are reported, and their values
  when last reported (rates are measured from there)."""

  server: Server | None = None
  tables: TableInfo | None = None
  time: float = 0.0
  counters: dict[str, int] = dataclasses.field(default_factory=dict)

  def read(self) -> tuple[dict[str, int], Mapping[str, Mapping[str, Any]]]:
    """The counters now, by name, and the tables' info."""
    counters = {}
    if self.server is not None:
      counters["calls"], counters["errors"] = self.server.calls, self.server.errors
    tables = self.tables() if self.tables is not None else {}
    for table, info in tables.items():
      counters[f"{table}.inserts"] = info["num_inserts"]
      counters[f"{table}.samples"] = info["num_samples"]
    return counters, tables

  def restart_rates(self) -> None:
    """The next rates are measured from now."""
    self.time, self.counters = time.monotonic(), self.read()[0]


class Reporter:
  """Sends this process's `ProcessStats` to the coordinator every `interval` seconds."""

  def __init__(self, control: Control, interval: float = REPORT_SECONDS):
    self._control = control
    self._interval = interval
    self._nodes: dict[str, _Tracked] = {}
    self._lock = threading.Lock()
    self._stopped = threading.Event()
    self._process = psutil.Process()
    self._warned = False
    self._thread = threading.Thread(target=self._run, name="stats-reporter", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Sends no more reports; a report being sent is not waited for."""
    self._stopped.set()

  def track_server(self, node: str, server: Server) -> None:
    """Reports the calls and errors counted by `node`'s courier server."""
    with self._lock:
      tracked = self._nodes.setdefault(node, _Tracked())
      tracked.server = server
      tracked.restart_rates()

  def track_tables(self, node: str, info: TableInfo) -> None:
    """Reports `node`'s replay tables, as `info()` describes them."""
    with self._lock:
      tracked = self._nodes.setdefault(node, _Tracked())
      tracked.tables = info
      tracked.restart_rates()

  def forget(self, node: str) -> None:
    """Stops reporting `node`'s counters (it has ended)."""
    with self._lock:
      self._nodes.pop(node, None)

  def sample(self) -> control_pb2.ProcessStats:
    """The process's usage since the previous sample, and its nodes' counters."""
    now = time.monotonic()
    with self._lock:
      tracked = list(self._nodes.items())
    usage = control_pb2.ProcessUsage(
      cpu_percent=self._process.cpu_percent(None),
      memory_bytes=self._process.memory_info().rss,
    )
    return control_pb2.ProcessStats(
      pid=os.getpid(),
      host=socket.gethostname(),
      usage=usage,
      nodes=[_node_stats(name, node, now) for name, node in tracked],
    )

  def _run(self) -> None:
    self._process.cpu_percent(None)  # the first reading then covers the first interval
    while not self._stopped.wait(self._interval):
      try:
        self._control.report_stats(self.sample())
      except errors.ProgramStoppedError:
        return  # the coordinator is gone: the program is over
      except Exception:
        if self._stopped.is_set():
          return  # the runtime closed its control client under this report
        if not self._warned:
          self._warned = True
          log.exception("could not report this process's stats; `lp status --watch` shows none")


def _node_stats(name: str, node: _Tracked, now: float) -> control_pb2.NodeStats:
  """`node`'s counters, with their rates since the previous sample (updated here)."""
  counters, tables = node.read()
  seconds = now - node.time

  def rate(key: str) -> float:
    if seconds <= 0:
      return 0.0
    return max(0, counters[key] - node.counters.get(key, counters[key])) / seconds

  stats = control_pb2.NodeStats(node=name)
  if node.server is not None:
    stats.calls, stats.errors = counters["calls"], counters["errors"]
    stats.calls_per_second, stats.errors_per_second = rate("calls"), rate("errors")
  for table, info in tables.items():
    stats.tables.add(
      name=table,
      size=info["size"],
      max_size=info["max_size"],
      inserts=info["num_inserts"],
      samples=info["num_samples"],
      inserts_per_second=rate(f"{table}.inserts"),
      samples_per_second=rate(f"{table}.samples"),
    )
  node.time, node.counters = now, counters
  return stats

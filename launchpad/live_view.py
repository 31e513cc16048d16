"""What a running program is doing, for people: `lp status --watch` (`lp top`)
and the progress lines of `lp launch`.

Everything shown comes from the coordinator's Status, never from this host's
process table: each node's process reports its own CPU, memory and counters
(stats.py), so the view is the same for every launcher, whichever hosts the
nodes run on.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from launchpad import errors
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, PENDING

# Moves the cursor home and clears the screen: a terminal shows one frame at a time.
CLEAR_SCREEN = "\x1b[H\x1b[2J"
COLUMNS = ("NODE", "STATE", "RESTARTS", "HOST", "PID", "CPU%", "MEM MB", "CALLS/S", "ERRORS/S")
# Columns aligned left; the others are numbers, aligned right.
_LEFT = {"NODE", "STATE", "HOST"}
# Processes report every second (stats.REPORT_SECONDS): figures older than
# this come from a process that stopped reporting.
STALE_SECONDS = 5.0


def frame(reply: control_pb2.StatusReply, title: str) -> str:
  """One table of the program's nodes, with a title line, as text."""
  state = f"stopping: {reply.reason}" if reply.stopping else "running"
  lines = [f"{title}  program={reply.program}  {state}  {time.strftime('%H:%M:%S')}"]
  rows = [COLUMNS]
  tables: dict[int, list[str]] = {}  # row -> its replay tables' lines
  for node in reply.nodes:
    rows.append(_row(node))
    tables[len(rows) - 1] = [_table_line(t) for t in node.stats.tables]
    if node.HasField("metrics"):
      tables[len(rows) - 1].append(metrics_line(node.metrics))
  widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
  for index, row in enumerate(rows):
    cells = [
      cell.ljust(width) if column in _LEFT else cell.rjust(width)
      for column, cell, width in zip(COLUMNS, row, widths, strict=True)
    ]
    lines.append("  ".join(cells).rstrip())
    lines.extend(f"  {line}" for line in tables.get(index, ()))
  shared = Counter((n.host, n.pid) for n in reply.nodes if n.HasField("usage"))
  if any(count > 1 for count in shared.values()):
    lines.append("CPU% and MEM MB are per process: nodes with the same HOST and PID share them.")
  stale = [n.node for n in reply.nodes if n.HasField("usage") and n.stats_age > STALE_SECONDS]
  if stale:
    lines.append(
      f"no report for over {STALE_SECONDS:g} s from the processes of {', '.join(stale)}: "
      "their figures are old (a process busy without releasing the interpreter, or stopped)."
    )
  return "\n".join(lines) + "\n"


def _row(node: control_pb2.NodeStatus) -> tuple[str, ...]:
  usage = node.usage if node.HasField("usage") else None
  stats = node.stats if node.HasField("stats") else None
  return (
    node.node,
    node.state,
    str(node.restarts),
    node.host or "-",
    str(node.pid) if node.pid else "-",
    f"{usage.cpu_percent:.0f}" if usage else "-",
    f"{usage.memory_bytes / 2**20:.0f}" if usage else "-",
    _rate(stats.calls_per_second) if stats else "-",
    _rate(stats.errors_per_second) if stats else "-",
  )


def _table_line(table: control_pb2.TableStats) -> str:
  return (
    f"table {table.name}: size {table.size}/{table.max_size}  "
    f"inserts/s {_rate(table.inserts_per_second)}  samples/s {_rate(table.samples_per_second)}"
  )


def metrics_line(metrics: control_pb2.MetricsReport) -> str:
  """The node's latest lp.report, as `step 1200: loss 0.25  return 183`."""
  values = "  ".join(f"{name} {metrics.values[name]:.4g}" for name in sorted(metrics.values))
  return f"step {metrics.step}: {values}"


def _rate(value: float) -> str:
  if value >= 10_000:
    return f"{value / 1000:.0f}k"
  return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ended(reply: control_pb2.StatusReply) -> bool:
  """True once every node has finished or failed."""
  return all(node.state in (FINISHED, FAILED) for node in reply.nodes)


def watch(
  read: Callable[[], control_pb2.StatusReply],
  title: str,
  out: TextIO,
  interval: float = 1.0,
  iterations: int | None = None,
) -> int:
  """Shows a frame of the program every `interval` seconds until it ends,
  `iterations` frames were shown, or Ctrl-C; returns the exit status (0)."""
  ended_line = f"{title}: the program has ended.\n"

  def next_frame() -> Frame:
    try:
      reply = read()
    except errors.ProgramStoppedError:
      return Frame("", ended_line)
    return Frame(frame(reply, title), ended_line if ended(reply) else None)

  return show(next_frame, out, interval, iterations)


@dataclasses.dataclass(frozen=True)
class Frame:
  """One frame of a live view: its text ("" for none), and, on the last
  frame, the line that says what ended ("" for none)."""

  text: str
  last: str | None = None


def show(
  next_frame: Callable[[], Frame],
  out: TextIO,
  interval: float = 1.0,
  iterations: int | None = None,
) -> int:
  """The loop of every live view (`lp top` of a program or a sweep): a frame
  every `interval` seconds until one is the last, `iterations` frames were
  shown, or Ctrl-C; returns the exit status (0).

  On a terminal each frame replaces the last; otherwise frames follow each
  other, separated by a blank line, without escape codes.
  """
  tty = out.isatty()
  shown = 0
  try:
    while True:
      current = next_frame()
      if current.text:
        out.write(CLEAR_SCREEN + current.text if tty else current.text + "\n")
        shown += 1
      if current.last is not None:
        out.write(current.last)
        out.flush()
        return 0
      out.flush()
      if iterations is not None and shown >= iterations:
        return 0
      time.sleep(interval)
  except KeyboardInterrupt:
    out.write("\n")
    return 0


class LaunchProgress:
  """A few lines on stderr while a launch or a stop takes long, never a stream.

  `update` is given the program's status every fraction of a second. It
  prints how many nodes have started (at most once a second while that
  changes, once every 10 s while it does not, and once when all have), and
  after a stop, which nodes are still running when that lasts over a second.
  """

  def __init__(
    self,
    program: str,
    out: TextIO,
    grace_period: float,
    start: float,
    clock: Callable[[], float] = time.monotonic,
  ):
    """`start` is when the launch began, on `clock`."""
    self._program = program
    self._out = out
    self._grace_period = grace_period
    self._clock = clock
    self._start = start
    self._all_started = False
    self._stop_seen: float | None = None
    self._last_time = -float("inf")  # of the last line printed
    self._last_news: object = None  # what the last line said

  def update(self, reply: control_pb2.StatusReply) -> None:
    now = self._clock()
    if reply.stopping:
      self._stopping(reply, now)
    elif not self._all_started:
      self._starting(reply, now)

  def _starting(self, reply: control_pb2.StatusReply, now: float) -> None:
    total = len(reply.nodes)
    started = sum(node.state != PENDING for node in reply.nodes)
    elapsed = now - self._start
    if started == total:
      self._all_started = True
      self._say(f"all {total} nodes started ({elapsed:.1f} s)", now, None)
    elif elapsed >= 1.0 and self._due(started, now, quiet=10.0):
      self._say(f"{started}/{total} nodes started", now, started)

  def _stopping(self, reply: control_pb2.StatusReply, now: float) -> None:
    if self._stop_seen is None:
      self._stop_seen = now
    running = [node.node for node in reply.nodes if node.state not in (FINISHED, FAILED)]
    if not running or now - self._stop_seen < 1.0 or not self._due(running, now, quiet=5.0):
      return
    names = ", ".join(running[:5]) + (", ..." if len(running) > 5 else "")
    left = self._grace_period - (now - self._stop_seen)
    forced = f"forced in {left:.0f} s" if left > 0 else "being forced"
    self._say(f"stopping: {len(running)} nodes still running ({forced}): {names}", now, running)

  def _due(self, news: object, now: float, quiet: float) -> bool:
    """A line is due: `news` changed a second or more after the last line,
    or `quiet` seconds passed without one."""
    since = now - self._last_time
    return (news != self._last_news and since >= 1.0) or since >= quiet

  def _say(self, text: str, now: float, news: object) -> None:
    self._out.write(f"lp launch: {self._program}: {text}\n")
    self._out.flush()
    self._last_time, self._last_news = now, news

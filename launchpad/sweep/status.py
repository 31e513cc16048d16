"""`lp status`, `lp top` and `lp stop` of sweeps: a table of each sweep and
its trials, and the way to stop one from another shell.

A sweep rewrites its status.json on every change (a trial started, reported,
ended), so another shell reads the table from there without touching the
study's database: trial number, state, last step and objective, and the
parameters, one column each. A sweep whose process is gone without saying
it ended shows as `gone`, with the way to resume it. `lp stop NAME` leaves
a request in the sweep's directory, which its process looks for between
events (runner.py), as it looks for Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from launchpad import live_view
from launchpad.sweep import directory as directory_lib
from launchpad.sweep import results, study
from launchpad.sweep.errors import SweepError

RUNNING = "running"
GONE = "gone"  # its process ended without marking the sweep over


def state(status: dict[str, Any]) -> str:
  """The sweep's state: running, gone, or how it ended (finished, failed, interrupted)."""
  said = status.get("state", "")
  if said == RUNNING and study.owner_is_gone(status.get("owner")):
    return GONE
  return said


def running() -> list[directory_lib.SweepDirectory]:
  """The sweeps whose process runs now."""
  found = []
  for sweep in directory_lib.every():
    status = sweep.read_status()
    if status is not None and state(status) == RUNNING:
      found.append(sweep)
  return found


def named(name: str) -> directory_lib.SweepDirectory | None:
  """The sweep called exactly `name` that has a status (it ran), or None."""
  try:
    sweep = directory_lib.SweepDirectory(directory_lib.root() / directory_lib.check_name(name))
  except SweepError:
    return None
  return sweep if sweep.read_status() is not None else None


def find(name: str) -> directory_lib.SweepDirectory | None:
  """The sweep called `name` (running or not), or the only running one whose
  name starts with it."""
  every = {sweep.name: sweep for sweep in directory_lib.every()}
  if name in every and every[name].read_status() is not None:
    return every[name]
  matches = [sweep for sweep in running() if sweep.name.startswith(name)]
  return matches[0] if len(matches) == 1 else None


def running_text() -> str:
  """A sentence naming the running sweeps, for messages about names not
  found; "" when none runs."""
  names = ", ".join(sweep.name for sweep in running())
  return f"Running sweeps: {names}." if names else ""


def request_stop(sweep: directory_lib.SweepDirectory, reason: str) -> None:
  """Asks the process running `sweep` to stop it gracefully: its running
  trials' programs stop, and run again when the sweep runs again.

  Raises SweepError, saying what to do, when no process runs the sweep.
  """
  status = sweep.read_status() or {}
  now = state(status)
  if now == GONE:
    raise SweepError(
      f"sweep {sweep.name} has no process any more (it ended without saying so, killed "
      "perhaps): there is nothing to stop; run the same `lp sweep` command again to resume it."
    )
  if now != RUNNING:
    raise SweepError(
      f"sweep {sweep.name} is not running ({now or 'no state'}): there is nothing to stop; "
      f"`lp status {sweep.name}` shows how it ended. {running_text()}".rstrip()
    )
  sweep.request_stop(reason)


def table(status: dict[str, Any]) -> str:
  """The sweep's title line, its best trial, and a row per trial."""
  rows = status.get("rows", [])
  objective = status.get("objective", "value")
  counts = status.get("counts", {})
  ended = sum(counts.get(s, 0) for s in (results.COMPLETE, results.PRUNED, results.FAILED))
  summary = ", ".join(f"{counts[s]} {s}" for s in sorted(counts)) or "no trial yet"
  owner = status.get("owner") or {}
  sweep_state = state(status)
  lines = [
    f"sweep {status.get('name')}  {sweep_state}  {ended}/{status.get('trials')} trials ended "
    f"({summary})  parallel {status.get('parallel')}  pid {owner.get('pid', '-')}  "
    f"{time.strftime('%H:%M:%S', time.localtime(status.get('updated', time.time())))}"
  ]
  if sweep_state == GONE:
    lines.append(
      "  its process is gone: run the same `lp sweep` command again to resume it (trials it "
      "left running run again)."
    )
  best = status.get("best")
  if best:
    lines.append(
      f"  best: trial {best['number']}  {objective} {results.format_value(best['value'])}  "
      f"{results.params_text(best['params'])}"
    )
  names = sorted({name for row in rows for name in row.get("params", {})})
  cells = [["TRIAL", "STATE", "STEP", objective.upper(), *(n.upper() for n in names)]]
  for row in rows:
    cells.append(
      [
        str(row["number"]),
        row["state"],
        "-" if row.get("step") is None else str(row["step"]),
        "-" if row.get("value") is None else results.format_value(row["value"]),
        *(results.format_value(row["params"].get(n, "-")) for n in names),
      ]
    )
  widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
  for line in cells:
    text = "  ".join(  # trial and state to the left, numbers and parameters to the right
      cell.ljust(width) if i < 2 else cell.rjust(width)
      for i, (cell, width) in enumerate(zip(line, widths, strict=True))
    )
    lines.append(f"  {text.rstrip()}")
  failed = [row for row in rows if row["state"] == results.FAILED and row.get("error")]
  for row in failed[-3:]:
    lines.append(f"  trial {row['number']} failed: {row['error']}")
  return "\n".join(lines) + "\n"


def watch(
  sweep: directory_lib.SweepDirectory,
  out: TextIO,
  interval: float = 1.0,
  iterations: int | None = None,
) -> int:
  """`lp top SWEEP`: the table every `interval` seconds until the sweep is no
  longer running, `iterations` tables were shown, or Ctrl-C; the exit status (0)."""

  def next_frame() -> live_view.Frame:
    status = sweep.read_status() or {"name": sweep.name, "state": "unreadable"}
    return live_view.Frame(table(status), None if state(status) == RUNNING else "")

  return live_view.show(next_frame, out, interval, iterations)

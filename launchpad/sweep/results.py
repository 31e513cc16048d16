"""A sweep's trials as rows: for its live table (status.json), results.csv and its summary.

Everything comes from the study, so a sweep that resumed shows the trials
of its earlier runs too: a trial's value and last step are the objective it
reported last (Optuna's intermediate values), its state Optuna's, except
that failed trials a sweep process left behind show as `stale`.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from collections.abc import Iterable
from typing import Any

from launchpad import private_files

# Trial states as the sweep's tables say them.
RUNNING, COMPLETE, PRUNED, FAILED, STALE, QUEUED = (
  "running",
  "complete",
  "pruned",
  "failed",
  "stale",
  "queued",
)
_STATES = {
  "RUNNING": RUNNING,
  "COMPLETE": COMPLETE,
  "PRUNED": PRUNED,
  "FAIL": FAILED,
  "WAITING": QUEUED,
}


def row(trial: Any, stale: set[int]) -> dict[str, Any]:
  """What the tables show of one trial (an Optuna FrozenTrial)."""
  state = _STATES[trial.state.name]
  if state == FAILED and trial.number in stale:
    state = STALE
  step = trial.last_step
  value = trial.value if trial.value is not None else trial.intermediate_values.get(step)
  error = trial.user_attrs.get("error", "")
  start, end = trial.datetime_start, trial.datetime_complete
  if start is not None:
    seconds = ((end or datetime.datetime.now()) - start).total_seconds()
  else:
    seconds = None
  return {
    "number": trial.number,
    "state": state,
    "value": value,
    "step": step,
    "seed": trial.user_attrs.get("seed"),
    "params": dict(trial.params),
    "seconds": seconds,
    "rerun_of": trial.user_attrs.get("rerun_of"),
    "directory": trial.user_attrs.get("directory", ""),
    "error": error.strip().splitlines()[0] if error.strip() else "",
  }


def rows(trials: Iterable[Any], stale: set[int]) -> list[dict[str, Any]]:
  return [row(trial, stale) for trial in trials]


def counts(table: list[dict[str, Any]]) -> dict[str, int]:
  """How many trials are in each state."""
  found: dict[str, int] = {}
  for entry in table:
    found[entry["state"]] = found.get(entry["state"], 0) + 1
  return found


def best(table: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
  """The complete trial with the best value, if there is one."""
  done = [e for e in table if e["state"] == COMPLETE and _finite(e["value"])]
  if not done:
    return None
  pick = max if direction == "maximize" else min
  return pick(done, key=lambda e: e["value"])


def params_text(params: dict[str, Any]) -> str:
  """`a=1 b=0.001`: parameters in a line, by name."""
  return " ".join(f"{name}={format_value(params[name])}" for name in sorted(params))


def format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def write_csv(path: Any, table: list[dict[str, Any]], objective: str) -> None:
  """results.csv: a row per trial, a column per parameter (a private file)."""
  names = sorted({name for entry in table for name in entry["params"]})
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(
    [
      "trial",
      "state",
      objective,
      "step",
      "seed",
      *names,
      "seconds",
      "rerun_of",
      "directory",
      "error",
    ]
  )
  for e in table:
    writer.writerow(
      [
        e["number"],
        e["state"],
        "" if e["value"] is None else e["value"],
        "" if e["step"] is None else e["step"],
        "" if e["seed"] is None else e["seed"],
        *(e["params"].get(name, "") for name in names),
        "" if e["seconds"] is None else f"{e['seconds']:.2f}",
        "" if e["rerun_of"] is None else e["rerun_of"],
        e["directory"],
        e["error"],
      ]
    )
  private_files.write(path, out.getvalue())


def _finite(value: Any) -> bool:
  return isinstance(value, int | float) and math.isfinite(value)

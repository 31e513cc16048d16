"""curves.png: every trial's objective against its step, pruned ones marked, the best named.

Needs matplotlib (an optional dependency, in launchpad-rl[examples]); its
object API only, so no display and no global pyplot state.
"""

from __future__ import annotations

import pathlib
from typing import Any

from launchpad.sweep import results


def save_curves(
  path: pathlib.Path,
  trials: list[Any],
  table: list[dict[str, Any]],
  objective: str,
  title: str,
  best: dict[str, Any] | None,
  varying: list[str],
) -> bool:
  """Draws the curves of `trials` (Optuna FrozenTrials; `table` their rows)
  into `path`, naming the best trial's `varying` parameters (those the
  space gives more than one value); False when matplotlib is not installed."""
  try:
    from matplotlib.figure import Figure
  except ImportError:
    return False
  states = {entry["number"]: entry["state"] for entry in table}
  figure = Figure(figsize=(9, 5), layout="constrained")
  axes = figure.subplots()
  styles = {
    results.COMPLETE: {"color": "tab:blue", "alpha": 0.6, "linewidth": 1.2},
    results.PRUNED: {"color": "tab:grey", "alpha": 0.6, "linewidth": 1.0, "linestyle": "--"},
    results.FAILED: {"color": "tab:red", "alpha": 0.6, "linewidth": 1.0, "linestyle": ":"},
  }
  labelled: set[str] = set()
  for trial in trials:
    state = states.get(trial.number)
    points = sorted(trial.intermediate_values.items())
    if not points or state not in styles or (best and trial.number == best["number"]):
      continue
    steps, values = zip(*points, strict=True)
    label = state if state not in labelled else None
    labelled.add(state)
    axes.plot(steps, values, label=label, **styles[state])
    if state == results.PRUNED:
      axes.plot(steps[-1], values[-1], marker="x", color="black", markersize=6, linestyle="none")
  if best is not None:
    chosen = next(t for t in trials if t.number == best["number"])
    steps, values = zip(*sorted(chosen.intermediate_values.items()), strict=True)
    axes.plot(
      steps,
      values,
      color="tab:orange",
      linewidth=2.5,
      label=f"best: trial {best['number']}, {objective} {results.format_value(best['value'])}",
    )
    chosen_params = {k: v for k, v in best["params"].items() if k in varying}
    title = f"{title}\nbest: {results.params_text(chosen_params)}"
  if results.PRUNED in labelled:
    axes.plot([], [], marker="x", color="black", linestyle="none", label="pruned here")
  axes.set_xlabel("step (lp.report)")
  axes.set_ylabel(objective)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  if labelled or best is not None:
    axes.legend(loc="best", fontsize=9)
  else:
    axes.text(0.5, 0.5, f"no trial reported {objective}", ha="center", transform=axes.transAxes)
  figure.savefig(path, dpi=100)
  return True

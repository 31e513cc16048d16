"""The learning curve: evaluation return against environment steps and against wall time."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Protocol


class CurvePoint(Protocol):
  env_steps: int
  seconds: float
  mean_return: float


def save_learning_curve(
  points: Sequence[CurvePoint], path: pathlib.Path, target_return: float, title: str
) -> None:
  """Writes a PNG of two panels side by side, the target return drawn as a dashed line."""
  # matplotlib's object API: no pyplot, so no global state and no display needed.
  from matplotlib.figure import Figure

  figure = Figure(figsize=(10, 4), layout="constrained")
  steps_axes, time_axes = figure.subplots(1, 2, sharey=True)
  returns = [p.mean_return for p in points]
  for axes, xs, label in (
    (steps_axes, [p.env_steps for p in points], "environment steps"),
    (time_axes, [p.seconds for p in points], "wall time since the start (s)"),
  ):
    axes.plot(xs, returns, marker="o", markersize=3)
    axes.axhline(target_return, color="grey", linestyle="--", label=f"target {target_return:g}")
    axes.set_xlabel(label)
    axes.grid(alpha=0.3)
  steps_axes.set_ylabel("mean greedy return")
  steps_axes.legend(loc="upper left")
  figure.suptitle(title)
  figure.savefig(path, dpi=100)

"""Sweeps: many variants of a program at once, the losers stopped early.

`lp.sweep(make_program, space, ...)` and `lp sweep` run trials, each a whole
program, over a search space, with Optuna's samplers and pruners; nodes
report with `lp.report(step=..., **metrics)`. docs/sweeps.md tells it all.

Modules: space (the search space), report (lp.report), study (Optuna),
trials (one trial's program), runner (the sweep itself), directory (its
files), results and plot (its tables and picture), status (`lp status`
and `lp top` of sweeps).
"""

from launchpad.sweep.errors import SweepError, TrialFailedError
from launchpad.sweep.report import report
from launchpad.sweep.runner import SweepResult, sweep
from launchpad.sweep.space import Space, SpaceError

__all__ = [
  "Space",
  "SpaceError",
  "SweepError",
  "SweepResult",
  "TrialFailedError",
  "report",
  "sweep",
]

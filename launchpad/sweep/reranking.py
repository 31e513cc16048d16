"""Successive halving whose promotions hold only while they still rank
(`--pruner asha --pruner-arg rerank=true`).

Optuna's SuccessiveHalvingPruner judges a trial once per rung, when the
trial reaches it, against the trials that reached it before. The first
trial at a rung has nothing to be compared with, so it goes on; a sweep of
whole programs runs few trials at once (2-8), so its first trials are
promoted through every rung and keep their slots for their whole budget,
however poor, while later trials wait for a slot. This pruner asks Optuna's
first; then, at each report, it ranks the trial again at the highest rung
it has passed, against every trial that has reached that rung by now, by
Optuna's own rule (among the best 1/reduction_factor of them, and at least
the best one). A trial that no longer ranks there is stopped, at its next
report rather than when it reaches the next rung.

A trial's value at a rung is the value it reported at the first step at or
past the rung's step, as Optuna's pruner takes it. Optuna is an optional
dependency: study.make_pruner imports this module only when it is asked for.
"""

from __future__ import annotations

from typing import Any

import optuna

from launchpad.sweep.errors import SweepError


class ReRankingPruner(optuna.pruners.BasePruner):
  """Optuna's SuccessiveHalvingPruner, then the trial ranked again at the
  highest rung it has passed."""

  def __init__(
    self,
    inner: optuna.pruners.SuccessiveHalvingPruner,
    min_resource: Any,
    reduction_factor: int,
    min_early_stopping_rate: int,
  ):
    """`inner` is built with the other three; min_resource must be a number
    of steps (SweepError otherwise): the rungs must be known from the first
    report on."""
    if isinstance(min_resource, bool) or not isinstance(min_resource, int) or min_resource < 1:
      raise SweepError(
        "pruner asha with rerank=true needs min_resource as a whole number of steps >= 1 "
        f"(the first rung), not {min_resource!r}: give --pruner-arg min_resource=N."
      )
    self._inner = inner
    self._reduction_factor = reduction_factor
    self._first_step = min_resource * reduction_factor**min_early_stopping_rate

  def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    if self._inner.prune(study, trial):
      return True
    values = trial.intermediate_values
    if not values or max(values) < self._first_step:
      return False
    rung_step = _highest_rung_step(max(values), self._first_step, self._reduction_factor)
    own = _value_at(values, rung_step)
    at_rung = [own]
    for other in study.get_trials(deepcopy=False):
      value = _value_at(other.intermediate_values, rung_step)
      if other.number != trial.number and value is not None:
        at_rung.append(value)
    keep = max(1, len(at_rung) // self._reduction_factor)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    threshold = sorted(at_rung, reverse=maximize)[keep - 1]
    return own < threshold if maximize else own > threshold


def _highest_rung_step(step: int, first_step: int, reduction_factor: int) -> int:
  """The step of the highest rung at or below `step`."""
  rung_step = first_step
  while rung_step * reduction_factor <= step:
    rung_step *= reduction_factor
  return rung_step


def _value_at(values: dict[int, float], rung_step: int) -> float | None:
  """The value reported at the first step at or past `rung_step`; None if none was."""
  past = [step for step in values if step >= rung_step]
  return values[min(past)] if past else None

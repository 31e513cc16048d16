"""asha with rerank=true (launchpad/sweep/reranking.py) on real Optuna studies.

The pruner decides from the study's trials alone, so these drive an Optuna
study in memory: trials asked for, values reported at steps, and the
pruner's answer read through `trial.should_prune()`, as a sweep does.
"""

from __future__ import annotations

import pytest

from launchpad.sweep.errors import SweepError
from launchpad.sweep.study import make_pruner

optuna = pytest.importorskip("optuna")

RUNGS = {"min_resource": 10, "reduction_factor": 3}  # rungs at 10, 30, 90 steps


def study_with(direction: str = "maximize", **options):
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna.create_study(direction=direction, pruner=make_pruner("asha", options))


def report(trial, step: int, value: float) -> bool:
  """Reports `value` at `step`; whether the pruner stops the trial."""
  trial.report(value, step)
  return trial.should_prune()


@pytest.mark.parametrize(
  ("direction", "poor", "good"), [("maximize", 1.0, 5.0), ("minimize", 5.0, 1.0)]
)
def test_a_trial_promoted_alone_is_stopped_once_a_later_one_beats_it_at_the_rung(
  direction, poor, good
):
  study = study_with(direction, **RUNGS, rerank=True)
  first = study.ask()
  assert not report(first, 10, poor)  # alone at the first rung: it goes on
  assert not report(first, 12, poor)
  later = study.ask()
  assert not report(later, 10, good)  # the best at the rung: it goes on
  assert report(first, 14, poor)  # no longer the best of two at the rung it has passed
  assert not report(later, 14, good)


def test_without_rerank_the_trial_promoted_alone_goes_on():
  study = study_with(**RUNGS)
  first = study.ask()
  assert not report(first, 10, 1.0)
  later = study.ask()
  assert not report(later, 10, 5.0)
  assert not report(first, 14, 1.0)  # Optuna's pruner judges it again only at 30 steps


def test_a_trial_is_ranked_at_the_highest_rung_it_has_passed_only():
  study = study_with(**RUNGS, rerank=True)
  first = study.ask()
  for step in (10, 20, 30):
    assert not report(first, step, 1.0)  # alone at 10 and at 30 steps
  later = study.ask()
  assert not report(later, 10, 5.0)
  # Beaten at the first rung, but alone at the second, where it is ranked.
  assert not report(first, 40, 1.0)
  assert not report(later, 20, 5.0)


def test_the_best_third_is_kept_once_enough_trials_reach_the_rung():
  study = study_with(**RUNGS, rerank=True)
  values = [9.0, 1.0, 2.0, 8.0, 3.0, 7.0]
  trials = [study.ask() for _ in values]
  stopped = [report(trial, 10, value) for trial, value in zip(trials, values, strict=True)]
  # Optuna's own decision when each reached the rung: the best of those before it.
  assert stopped == [False, True, True, True, True, True]
  # Six at the rung: the best two are kept; 9.0 is one of them, so it goes on.
  assert not report(trials[0], 12, 9.0)


@pytest.mark.parametrize(
  ("pruner", "options", "message"),
  [
    ("median", {"rerank": True}, r"rerank is an option of the pruner asha"),
    ("asha", {"rerank": "yes", **RUNGS}, r"rerank='yes': rerank is an option .* true or false"),
    ("asha", {"rerank": True}, r"needs min_resource as a whole number of steps.*'auto'"),
    ("asha", {"rerank": True, "min_resource": 0.5}, r"min_resource=N"),
  ],
)
def test_rerank_refuses_what_it_cannot_do(pruner, options, message):
  with pytest.raises(SweepError, match=message):
    make_pruner(pruner, options)

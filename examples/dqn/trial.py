"""The DQN as a trial of a sweep: a program factory over its hyperparameters.

  lp sweep examples/dqn/trial.py --space examples/dqn/sweep.toml --name dqn \
    --objective mean_return --parallel 2 --pruner median

Each trial is the whole program of launch.py (replay, counter, learner,
actors, evaluator); the evaluator reports `mean_return` at every evaluation
(lp.report), which the sweep prunes on, and stops the program once it
reaches the target return, or after `max_env_steps`.
"""

from __future__ import annotations

import os
import pathlib
import sys

if not __package__:
  # Loaded as a file (by `lp sweep`): make the package `dqn` importable, here
  # and in node processes, which inherit this process's import path.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import launchpad as lp
from dqn.config import DQNConfig
from dqn.program import make_program as make_dqn


def make_program(
  learning_rate: float = 1e-3,
  target_update_period: int = 250,
  seed: int = 0,
  num_actors: int = 2,
  max_env_steps: int = 20_000,
  eval_period: int = 1000,
) -> lp.Program:
  """The DQN with these settings (the others are DQNConfig's defaults); its
  results go to the trial's run directory."""
  # The nodes multiply small matrices: BLAS threads would only fight over the cores.
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  config = DQNConfig(
    seed=seed,
    learning_rate=learning_rate,
    target_update_period=target_update_period,
    max_env_steps=max_env_steps,
    eval_period=eval_period,
  )
  return make_dqn(config, num_actors=num_actors)

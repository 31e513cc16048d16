"""The evaluator: greedy episodes every so many environment steps, the curve, the run's end."""

from __future__ import annotations

import csv
import os
import pathlib
import time
from typing import NamedTuple

import gymnasium as gym
import numpy as np

import launchpad as lp
from dqn import environment, network, plotting
from dqn.config import DQNConfig
from dqn.counter import ENV_STEPS

# The multiprocess launcher tells node processes their run directory in this variable.
RUN_DIR_VARIABLE = "LAUNCHPAD_RUN_DIR"
CURVE_FILE = "dqn_curve.png"
EVALUATIONS_FILE = "dqn_evaluations.csv"
# How often the evaluator asks the counter whether an evaluation is due.
POLL_SECONDS = 0.25


class Evaluation(NamedTuple):
  """One point of the learning curve."""

  env_steps: int
  learner_steps: int
  seconds: float  # since the evaluator started, which is about when the program did
  mean_return: float


def output_directory(output_dir: str | None) -> pathlib.Path:
  """Where results go: `output_dir` if given, else the launcher's run directory, else here."""
  return pathlib.Path(output_dir or os.environ.get(RUN_DIR_VARIABLE) or os.getcwd())


def greedy_returns(env: gym.vector.VectorEnv, params: network.Params, seed: int) -> np.ndarray:
  """The return of one greedy episode in each environment of the vector."""
  observations, _ = env.reset(seed=seed)
  returns = np.zeros(env.num_envs)
  running = np.ones(env.num_envs, dtype=bool)
  while running.any():
    actions = network.forward(params, observations).argmax(axis=1)
    observations, rewards, terminated, truncated, _ = env.step(actions)
    returns += np.where(running, rewards, 0.0)
    running &= ~(terminated | truncated)
  return returns


class Evaluator:
  """Evaluates the learner's network every `config.eval_period` environment steps.

  Each evaluation runs `config.eval_episodes` greedy episodes at once and
  adds a row to dqn_evaluations.csv. The evaluator ends the run: it stops
  the program once the mean return reaches `config.target_return`, or once
  the actors have taken `config.max_env_steps` steps, after one last
  evaluation, so that the curve ends with the network trained on all of
  them. However the program ends, it draws the learning curve
  (dqn_curve.png) first. Served by a CourierNode so that a test can call
  `evaluate()`.

  It asks the learner for its parameters (`get_params()`) rather than
  reading the actors' broadcast, which may be a publish period behind: an
  evaluation is rare, and it should be of the network trained on every
  step so far, with that step count on its row.
  """

  def __init__(
    self,
    learner: lp.CourierClient,
    counter: lp.CourierClient,
    config: DQNConfig,
    output_dir: str | None = None,
  ) -> None:
    self._learner = learner.with_timeout(config.timeout_seconds)
    self._counter = counter.with_timeout(config.timeout_seconds)
    self._config = config
    self._directory = output_directory(output_dir)
    self._env = environment.make_vector_env(config.env_name, config.eval_episodes)
    self._seeds = np.random.default_rng(config.seed + 1)
    self._start = time.monotonic()
    self._evaluations: list[Evaluation] = []
    self._write_rows([Evaluation._fields], mode="w")  # a new file: rows of this run only

  def evaluate(self) -> Evaluation:
    """Runs the episodes with the learner's current network and records the result."""
    env_steps = self._counter.get_counts()[ENV_STEPS]
    learner_steps, params = self._learner.get_params()
    returns = greedy_returns(self._env, params, seed=int(self._seeds.integers(2**31)))
    evaluation = Evaluation(
      env_steps, learner_steps, time.monotonic() - self._start, float(returns.mean())
    )
    self._evaluations.append(evaluation)
    self._write_rows([evaluation], mode="a")
    # For a sweep to prune on (examples/dqn/trial.py), and for `lp status`. Pruners
    # compare trials at equal steps: evaluations come every eval_period steps or so.
    step = env_steps // self._config.eval_period * self._config.eval_period
    lp.report(step=step, mean_return=evaluation.mean_return, learner_steps=learner_steps)
    print(
      f"Evaluator: return {evaluation.mean_return:6.1f} after {env_steps} environment steps, "
      f"{learner_steps} learner steps, {evaluation.seconds:.1f} s",
      flush=True,
    )
    return evaluation

  def run(self) -> None:
    try:
      reason = self._evaluate_until_done()
    finally:
      self._save_curve()
    if reason:
      print(f"Evaluator: {reason}; stopping the program", flush=True)
      lp.stop()

  def _evaluate_until_done(self) -> str | None:
    """Evaluates whenever an evaluation is due, until one ends the run; then why it does.

    An evaluation is due every `eval_period` environment steps and once the
    step budget is spent. None if the program was stopped by something else.
    """
    config = self._config
    next_due = 0
    while not lp.wait_for_stop(POLL_SECONDS):
      if self._counter.get_counts()[ENV_STEPS] < next_due:
        continue
      evaluation = self.evaluate()
      if evaluation.mean_return >= config.target_return:
        return (
          f"reached the target return {config.target_return:g} after "
          f"{evaluation.env_steps} environment steps, {evaluation.seconds:.1f} s"
        )
      if evaluation.env_steps >= config.max_env_steps:
        return (
          f"{evaluation.env_steps} environment steps reached the budget of {config.max_env_steps}"
        )
      next_due = min(evaluation.env_steps + config.eval_period, config.max_env_steps)
    return None

  def _write_rows(self, rows: list[tuple], mode: str) -> None:
    with (self._directory / EVALUATIONS_FILE).open(mode, newline="") as f:
      csv.writer(f).writerows(rows)

  def _save_curve(self) -> None:
    if self._evaluations:
      path = self._directory / CURVE_FILE
      title = f"DQN on {self._config.env_name}: greedy evaluation return"
      plotting.save_learning_curve(self._evaluations, path, self._config.target_return, title)
      print(f"Evaluator: learning curve written to {path}", flush=True)

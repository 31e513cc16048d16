"""The agent's hyperparameters, in one place that every node receives."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """What the nodes of the DQN program share: environment, network, replay, schedule.

  The defaults reach an evaluation return of 195 in about
  4,000 to 10,000 environment steps on CartPole-v1 (docs/examples.md).
  """

  env_name: str = "CartPole-v1"
  seed: int = 0
  hidden_sizes: tuple[int, ...] = (64, 64)

  # Learning.
  discount: float = 0.99
  n_step: int = 3
  learning_rate: float = 1e-3
  batch_size: int = 64
  target_update_period: int = 250  # learner steps between target network copies
  params_publish_period: int = 10  # learner steps between two versions it broadcasts

  # Replay: proportional prioritization (Schaul et al., 2016) with a rate
  # limiter that samples each transition `samples_per_insert` times on average.
  samples_per_insert: float = 8.0
  samples_per_insert_tolerance: float = 0.1
  min_replay_size: int = 1000
  max_replay_size: int = 50_000
  priority_exponent: float = 0.6
  importance_sampling_exponent: float = 0.4

  # Acting. Epsilon falls linearly from 1 to `final_epsilon` over the first
  # `epsilon_decay_steps` environment steps of all actors together.
  envs_per_actor: int = 4
  epsilon_decay_steps: int = 10_000
  final_epsilon: float = 0.02
  insert_period: int = 8  # vector steps between two inserts of an actor
  params_update_period: int = 50  # vector steps between two reads of the newest version

  # Evaluation and stopping. The evaluator stops the program once an evaluation
  # reaches `target_return`, or, once the actors have taken `max_env_steps`
  # steps, after one last evaluation.
  eval_period: int = 1000  # environment steps between evaluations
  eval_episodes: int = 10
  target_return: float = 195.0
  max_env_steps: int = 200_000

  # Every call to another node gives up after this many seconds.
  timeout_seconds: float = 60.0

  @property
  def error_buffer(self) -> float:
    """How far, in samples, the learner and the actors may drift from the ratio (Acme's rule)."""
    tolerance = self.samples_per_insert_tolerance * self.min_replay_size * self.samples_per_insert
    return max(tolerance, 2.0 * max(1.0, self.samples_per_insert), float(self.batch_size))

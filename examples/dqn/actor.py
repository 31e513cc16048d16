"""An actor: steps a few environments epsilon-greedily and inserts what it saw into replay."""

from __future__ import annotations

import numpy as np

import launchpad as lp
from dqn import environment, losses, network
from dqn.config import DQNConfig
from dqn.counter import ENV_STEPS
from dqn.learner import PRIORITY_EPSILON
from dqn.replay_table import TABLE
from dqn.transitions import NStepTransitions, Transition, stack
from launchpad import replay
from launchpad.broadcast.client import BroadcastClient


def epsilon(config: DQNConfig, env_steps: int) -> float:
  """The exploration rate after `env_steps` steps of all actors: linear from 1 down to final."""
  fraction = min(1.0, env_steps / config.epsilon_decay_steps)
  return 1.0 + fraction * (config.final_epsilon - 1.0)


def epsilon_greedy(
  q_values: np.ndarray, epsilon_value: float, rng: np.random.Generator
) -> np.ndarray:
  """One action per row of `q_values`: the best, or with probability epsilon a random one."""
  num_rows, num_actions = q_values.shape
  explore = rng.random(num_rows) < epsilon_value
  return np.where(explore, rng.integers(num_actions, size=num_rows), q_values.argmax(axis=1))


class Actor:
  """Acts in `config.envs_per_actor` environments at once (one forward pass for all).

  Every `params_update_period` steps it takes the newest parameters the
  learner has broadcast (a read-only copy shared by the actors of a host).
  Every `insert_period` steps it inserts the n-step transitions completed
  since the last insert, in one call, with priorities from its own TD
  errors (as in Ape-X), and adds the steps to the counter, whose reply
  gives the total that sets epsilon.
  """

  def __init__(
    self,
    replay_client: replay.Client,
    broadcast: BroadcastClient,
    counter: lp.CourierClient,
    config: DQNConfig,
    actor_id: int,
  ) -> None:
    self._replay = replay_client.with_timeout(config.timeout_seconds)
    self._broadcast = broadcast
    self._counter = counter.with_timeout(config.timeout_seconds)
    self._config = config
    seed = config.seed * 1000 + actor_id
    self._rng = np.random.default_rng(seed)
    self._env = environment.make_vector_env(config.env_name, config.envs_per_actor)
    self._observations, _ = self._env.reset(seed=seed * config.envs_per_actor)
    self._transitions = NStepTransitions(config.envs_per_actor, config.n_step, config.discount)
    self._completed: list[Transition] = []
    self._params: network.Params = []
    self._steps = 0
    self._total_env_steps = 0

  def step(self) -> None:
    """One step of every environment; takes new parameters and inserts when their periods come."""
    config = self._config
    if self._steps % config.params_update_period == 0:
      # The first call waits for the learner's first version; later ones return at once.
      _, self._params = self._broadcast.latest(timeout=config.timeout_seconds)
    q_values = network.forward(self._params, self._observations)
    actions = epsilon_greedy(q_values, epsilon(config, self._total_env_steps), self._rng)
    next_observations, rewards, terminated, truncated, info = self._env.step(actions)
    finals = environment.final_observations(next_observations, info)
    self._completed += self._transitions.add(
      self._observations, actions, rewards, finals, terminated, truncated
    )
    self._observations = next_observations
    self._steps += 1
    if self._steps % config.insert_period == 0:
      self._insert(env_steps=config.insert_period * config.envs_per_actor)

  def run(self) -> None:
    while not lp.wait_for_stop(0):
      self.step()

  def _insert(self, env_steps: int) -> None:
    if self._completed:
      batch = stack(self._completed)
      errors = losses.td_errors(self._params, self._params, batch)
      priorities = np.abs(errors) + PRIORITY_EPSILON
      items = [transition._asdict() for transition in self._completed]
      self._replay.insert_batch(items, [{TABLE: float(p)} for p in priorities])
      self._completed = []
    self._total_env_steps = self._counter.increment(**{ENV_STEPS: env_steps})[ENV_STEPS]

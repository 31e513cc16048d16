"""The learner: streams prioritized batches, takes double DQN steps, updates priorities."""

from __future__ import annotations

import threading

import numpy as np

import launchpad as lp
from dqn import environment, losses, network
from dqn.config import DQNConfig
from dqn.replay_table import TABLE
from dqn.transitions import Transition
from launchpad import replay
from launchpad.replay.client import ReplaySample

# Added to |TD error| so that no transition's priority (and chance to be sampled) is 0.
PRIORITY_EPSILON = 1e-3
# Batches sampled ahead while the learner trains: enough to hide a round trip,
# few enough that priorities are at most this many updates old.
STREAM_BATCHES_AHEAD = 2


def importance_weights(
  probabilities: np.ndarray, table_size: np.ndarray, exponent: float
) -> np.ndarray:
  """(N * P(i))^-exponent, scaled so that the largest weight of the batch is 1."""
  weights = (np.asarray(table_size) * np.asarray(probabilities)) ** -exponent
  return (weights / weights.max()).astype(np.float32)


class Learner:
  """Owns the Q-network; served by a CourierNode so that actors and evaluator can pull it.

  Its `run()` steps until the program stops. `get_params()` may be called
  from courier threads at any time: a lock keeps it from copying parameters
  halfway through an update.
  """

  def __init__(self, replay_client: replay.Client, config: DQNConfig) -> None:
    self._replay = replay_client.with_timeout(config.timeout_seconds)
    self._config = config
    observation_size, num_actions = environment.environment_sizes(config.env_name)
    sizes = [observation_size, *config.hidden_sizes, num_actions]
    self._params = network.init_mlp(sizes, np.random.default_rng(config.seed))
    self._target_params = [p.copy() for p in self._params]
    self._optimizer = network.Adam(self._params, config.learning_rate)
    self._lock = threading.Lock()
    self._steps = 0

  def get_params(self) -> tuple[int, network.Params]:
    """The number of steps taken so far, and a copy of the online network's parameters."""
    with self._lock:
      return self._steps, [p.copy() for p in self._params]

  def step(self) -> float:
    """One update on a batch sampled now; returns its loss (before the update)."""
    return self._learn(self._replay.sample_batch(TABLE, self._config.batch_size))

  def _learn(self, sample: ReplaySample) -> float:
    """One double DQN update on `sample`, then its transitions' new priorities."""
    config = self._config
    batch = Transition(**sample.data)
    weights = importance_weights(
      sample.info.probability, sample.info.table_size, config.importance_sampling_exponent
    )
    with self._lock:
      grads, errors, loss = losses.dqn_gradients(self._params, self._target_params, batch, weights)
      self._optimizer.update(self._params, grads)
      self._steps += 1
      if self._steps % config.target_update_period == 0:
        self._target_params = [p.copy() for p in self._params]
    priorities = np.abs(errors) + PRIORITY_EPSILON
    self._replay.mutate_priorities(
      TABLE, updates=dict(zip(sample.info.key.tolist(), priorities.tolist(), strict=True))
    )
    return loss

  def run(self) -> None:
    """Steps until the program stops, on batches a replay stream samples ahead.

    While one batch trains, the next is already on its way (a batch or two
    ahead: their priorities are those before the updates in between).
    """
    try:
      with self._replay.stream(
        TABLE, self._config.batch_size, max_in_flight_batches=STREAM_BATCHES_AHEAD
      ) as stream:
        while not lp.wait_for_stop(0):
          self._learn(next(stream))
    finally:  # the stop may come as an error from the stream (the replay tables closed)
      print(f"Learner: stopped after {self._steps} steps", flush=True)

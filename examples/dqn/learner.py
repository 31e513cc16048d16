"""The learner: streams prioritized batches, takes double DQN steps, updates priorities,
and broadcasts its parameters to the actors."""

from __future__ import annotations

import threading

import numpy as np

import launchpad as lp
from dqn import environment, losses, network
from dqn.config import DQNConfig
from dqn.replay_table import TABLE
from dqn.transitions import Transition
from launchpad import replay
from launchpad.broadcast.client import BroadcastClient
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
  """Owns the Q-network; publishes it to the actors and serves it to the evaluator.

  It learns on batches of a replay stream, sampled ahead while it trains,
  and publishes its parameters to the broadcast node every
  `params_publish_period` steps, and once at the start, so that the actors
  can act before learning starts. Served by a CourierNode: `get_params()`
  gives the evaluator the current network, and a test can call `step()`;
  both may come from courier threads at any time, and a lock keeps
  `get_params()` from copying parameters halfway through an update.
  """

  def __init__(
    self, replay_client: replay.Client, broadcast: BroadcastClient, config: DQNConfig
  ) -> None:
    self._replay = replay_client.with_timeout(config.timeout_seconds)
    self._broadcast = broadcast
    self._config = config
    observation_size, num_actions = environment.environment_sizes(config.env_name)
    sizes = [observation_size, *config.hidden_sizes, num_actions]
    self._params = network.init_mlp(sizes, np.random.default_rng(config.seed))
    self._target_params = [p.copy() for p in self._params]
    self._optimizer = network.Adam(self._params, config.learning_rate)
    self._lock = threading.Lock()
    self._steps = 0
    # Sampling starts now. Each next() waits at most the timeout; the stream
    # closes when the program stops, which ends run().
    self._batches = self._replay.stream(
      TABLE,
      config.batch_size,
      max_in_flight_batches=STREAM_BATCHES_AHEAD,
      timeout=config.timeout_seconds,
    )
    lp.register_stop_handler(self._batches.close)
    self._publish()

  def get_params(self) -> tuple[int, network.Params]:
    """The number of steps taken so far, and a copy of the online network's parameters."""
    with self._lock:
      return self._steps, [p.copy() for p in self._params]

  def step(self) -> float:
    """One update on the stream's next batch; returns its loss (before the update)."""
    return self._learn(next(self._batches))

  def run(self) -> None:
    """Steps until the program stops (the stream closes then, and the loop ends)."""
    try:
      for sample in self._batches:
        self._learn(sample)
    finally:  # the stop may also come as an error: replay closed its table first
      self._batches.close()
      print(f"Learner: stopped after {self._steps} steps", flush=True)

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
      if self._steps % config.params_publish_period == 0:
        self._publish()
    priorities = np.abs(errors) + PRIORITY_EPSILON
    self._replay.mutate_priorities(
      TABLE, updates=dict(zip(sample.info.key.tolist(), priorities.tolist(), strict=True))
    )
    return loss

  def _publish(self) -> None:
    """Makes the current parameters the broadcast's newest version (copied once)."""
    self._broadcast.publish(self._params, timeout=self._config.timeout_seconds)

"""Double DQN: TD errors and the gradient of the Huber loss on them, in numpy."""

from __future__ import annotations

import numpy as np

from dqn import network
from dqn.transitions import Transition


def td_errors(
  params: network.Params, target_params: network.Params, batch: Transition
) -> np.ndarray:
  """Double Q-learning TD errors (van Hasselt et al., 2016), one per transition.

  The online network picks the next action and the target network values
  it: r + discount * Q_target(s', argmax_a Q(s', a)) - Q(s, a). With the
  online network as its own target this is plain Q-learning's error, which
  is what the actors use for the priorities of the transitions they insert.
  """
  rows = np.arange(len(batch.action))
  q = network.forward(params, batch.observation)[rows, batch.action]
  return _targets(params, target_params, batch) - q


def dqn_gradients(
  params: network.Params, target_params: network.Params, batch: Transition, weights: np.ndarray
) -> tuple[network.Params, np.ndarray, float]:
  """The gradient of the weighted mean Huber loss of the TD errors; also the errors and loss.

  `weights` are the importance-sampling weights of the batch's transitions,
  which correct for prioritized sampling.
  """
  rows = np.arange(len(batch.action))
  activations = network.forward_with_activations(params, batch.observation)
  q = activations[-1][rows, batch.action]
  errors = _targets(params, target_params, batch) - q
  loss = float(np.mean(weights * _huber(errors)))
  # d(loss)/dq = -clip(error, -1, 1) * weight / batch size, for the taken action only.
  output_grad = np.zeros_like(activations[-1])
  output_grad[rows, batch.action] = -np.clip(errors, -1.0, 1.0) * weights / len(errors)
  return network.gradients(params, activations, output_grad), errors, loss


def _targets(
  params: network.Params, target_params: network.Params, batch: Transition
) -> np.ndarray:
  next_actions = network.forward(params, batch.next_observation).argmax(axis=1)
  next_values = network.forward(target_params, batch.next_observation)
  rows = np.arange(len(next_actions))
  return batch.reward + batch.discount * next_values[rows, next_actions]


def _huber(x: np.ndarray) -> np.ndarray:
  magnitude = np.abs(x)
  return np.where(magnitude <= 1.0, 0.5 * x * x, magnitude - 0.5)

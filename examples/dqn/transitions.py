"""N-step transitions: what the actors insert into replay and the learner samples."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Transition(NamedTuple):
  """One n-step transition, or (stacked) a batch of them.

  `reward` is the discounted sum of the n rewards after `observation`, and
  `discount` what the value of `next_observation` is worth in that sum:
  discount**n, fewer steps when the episode ended sooner, and 0 when the
  episode terminated (a time limit does not terminate: the value still counts).
  """

  observation: np.ndarray
  action: np.ndarray
  reward: np.ndarray
  discount: np.ndarray
  next_observation: np.ndarray


def stack(transitions: Sequence[Transition]) -> Transition:
  """A batch: each field of the transitions stacked along a new first axis."""
  return Transition(*(np.stack(field) for field in zip(*transitions, strict=True)))


class NStepTransitions:
  """Turns the steps of a vector of environments into n-step transitions.

  Each environment keeps its last `n_step` (observation, action, reward)
  triples; a step completes the transition of the oldest one, and an
  episode's end completes all of them, with shorter horizons.
  """

  def __init__(self, num_envs: int, n_step: int, discount: float) -> None:
    self._n_step = n_step
    self._discount = discount
    self._pending: list[collections.deque] = [collections.deque() for _ in range(num_envs)]

  def add(
    self,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_observations: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
  ) -> list[Transition]:
    """Records one step of every environment; returns the transitions it completed.

    `next_observations` must be the observations the step ended in (before
    an automatic reset), as `environment.final_observations` gives them.
    """
    completed = []
    for i, pending in enumerate(self._pending):
      pending.append((observations[i], actions[i], rewards[i]))
      ended = bool(terminated[i] or truncated[i])
      while len(pending) == self._n_step or (ended and pending):
        completed.append(self._pop(pending, next_observations[i], bool(terminated[i])))
    return completed

  def _pop(self, pending: collections.deque, next_observation: np.ndarray, terminated: bool):
    horizon = len(pending)
    reward = sum(self._discount**k * step[2] for k, step in enumerate(pending))
    observation, action, _ = pending.popleft()
    return Transition(
      observation=np.asarray(observation, dtype=np.float32),
      action=np.int32(action),
      reward=np.float32(reward),
      discount=np.float32(0.0 if terminated else self._discount**horizon),
      next_observation=np.asarray(next_observation, dtype=np.float32),
    )

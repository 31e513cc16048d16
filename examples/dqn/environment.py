"""Gymnasium environments, as the actors and the evaluator step them: in small vectors."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def make_vector_env(env_name: str, num_envs: int) -> gym.vector.VectorEnv:
  """`num_envs` copies of the environment stepped together, in this process.

  An environment whose episode ends is reset in the same step (its first
  observation is returned, the last one goes to `final_observations`), so
  every step of the vector is a real step of every environment.
  """
  return gym.make_vec(
    env_name,
    num_envs=num_envs,
    vectorization_mode="sync",
    vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
  )


def final_observations(next_observations: np.ndarray, info: dict[str, Any]) -> np.ndarray:
  """The observations each environment's step ended in, before any reset replaced them."""
  finals = np.array(next_observations, copy=True)
  ended = info.get("_final_obs")
  if ended is not None and ended.any():
    finals[ended] = np.stack(info["final_obs"][ended])
  return finals


def environment_sizes(env_name: str) -> tuple[int, int]:
  """The observation size and number of actions of a flat-observation, discrete-action env."""
  env = gym.make(env_name)
  try:
    return int(np.prod(env.observation_space.shape)), int(env.action_space.n)
  finally:
    env.close()

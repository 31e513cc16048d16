"""The replay table the actors fill and the learner samples."""

from __future__ import annotations

from dqn.config import DQNConfig
from launchpad import replay
from launchpad.replay import rate_limiters, selectors

TABLE = "transitions"


def make_table(config: DQNConfig) -> replay.Table:
  """A prioritized table of transitions, the oldest evicted first, sampled at a fixed ratio.

  The SampleToInsertRatio limiter makes the learner sample each transition
  about `samples_per_insert` times: actors that run ahead wait for the
  learner (so they do not take its CPU for experience nobody learns from),
  and a learner that runs ahead waits for new experience.
  """
  return replay.Table(
    name=TABLE,
    sampler=selectors.Prioritized(priority_exponent=config.priority_exponent),
    remover=selectors.Fifo(),
    max_size=config.max_replay_size,
    rate_limiter=rate_limiters.SampleToInsertRatio(
      samples_per_insert=config.samples_per_insert,
      min_size_to_sample=config.min_replay_size,
      error_buffer=config.error_buffer,
    ),
  )

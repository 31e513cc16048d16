"""Actors fill a prioritized replay table; a learner samples it and updates priorities.

Run it with:

  python examples/replay_actors_learner.py --num_actors=3 --num_steps=50
  lp launch --mode=multiprocess examples/replay_actors_learner.py

The program has one ReplayNode serving a table "experience": a Prioritized
sampler, a Fifo remover (the oldest item goes when the table is full) and a
SampleToInsertRatio rate limiter, which keeps the learner from sampling each
transition more than about SAMPLES_PER_INSERT times and the actors from
running too far ahead of it. The handle of the ReplayNode becomes a
`replay.Client` inside the nodes that receive it.

Each actor (a PyNode) inserts transitions (numpy arrays) with priority 1.0
until the program stops. The learner (a CourierNode) samples a batch, fits a
linear model to it with one gradient step, and sets each sampled item's
priority to its absolute error, so badly predicted transitions come back
more often. After `--num_steps` steps it prints a summary line and stops the
whole program with `lp.stop()`.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

import launchpad as lp
from launchpad import replay
from launchpad.replay import Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

_NUM_ACTORS = flags.DEFINE_integer("num_actors", 2, "How many actors insert transitions.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "How many learner steps before stopping.")

TABLE = "experience"
OBS_SIZE = 4
BATCH_SIZE = 32
SAMPLES_PER_INSERT = 4.0
MIN_SIZE_TO_SAMPLE = 64
LEARNING_RATE = 0.05
# Every replay call waits at most this long for its rate limiter.
TIMEOUT_SECONDS = 30.0
# The weights the actors' rewards come from, which the learner tries to recover.
TRUE_WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)


def make_tables() -> list[Table]:
  return [
    Table(
      name=TABLE,
      sampler=sel.Prioritized(priority_exponent=0.8),
      remover=sel.Fifo(),
      max_size=10_000,
      rate_limiter=rl.SampleToInsertRatio(
        samples_per_insert=SAMPLES_PER_INSERT,
        min_size_to_sample=MIN_SIZE_TO_SAMPLE,
        error_buffer=2 * BATCH_SIZE,
      ),
    )
  ]


def actor(replay_client: replay.Client, actor_id: int) -> None:
  """Inserts transitions until the program stops."""
  rng = np.random.default_rng(actor_id)
  while not lp.wait_for_stop(0):
    obs = rng.normal(size=OBS_SIZE).astype(np.float32)
    reward = np.float32(obs @ TRUE_WEIGHTS + rng.normal(scale=0.1))
    transition = {"obs": obs, "reward": reward, "actor": np.int32(actor_id)}
    # When the program stops, this call may fail (the table closes): the
    # launcher counts that as the node's end, not a failure.
    replay_client.insert(transition, priorities={TABLE: 1.0}, timeout=TIMEOUT_SECONDS)


class Learner:
  """Samples batches, fits a linear model, and feeds the errors back as priorities."""

  def __init__(self, replay_client: replay.Client, num_steps: int) -> None:
    self._replay = replay_client
    self._num_steps = num_steps
    self._weights = np.zeros(OBS_SIZE, dtype=np.float32)
    self._steps = 0
    self._samples = 0

  def step(self) -> float:
    """One learning step; returns the batch's loss before the update."""
    batch = self._replay.sample_batch(TABLE, BATCH_SIZE, timeout=TIMEOUT_SECONDS)
    obs, reward = batch.data["obs"], batch.data["reward"]
    errors = obs @ self._weights - reward
    loss = float(np.mean(errors**2))
    self._weights -= LEARNING_RATE * 2 * obs.T @ errors / len(errors)
    # The item's new priority: how badly the model predicted it (never 0).
    updates = {
      int(key): float(abs(error)) + 1e-3 for key, error in zip(batch.info.key, errors, strict=True)
    }
    self._replay.mutate_priorities(TABLE, updates=updates)
    self._steps += 1
    self._samples += len(errors)
    return loss

  def run(self) -> None:
    loss = float("nan")
    for _ in range(self._num_steps):
      loss = self.step()
    info = self._replay.server_info()[TABLE]
    print(
      f"Learner: {self._steps} steps, {self._samples} samples, "
      f"{info['num_inserts']} transitions inserted, {info['num_updates']} priority updates, "
      f"last loss {loss:.4f}",
      flush=True,
    )
    lp.stop()


def make_program(num_actors: int = 2, num_steps: int = 20) -> lp.Program:
  program = lp.Program("replay_actors_learner")
  replay_handle = program.add_node(lp.ReplayNode(make_tables()), label="replay")
  with program.group("actor"):
    for actor_id in range(num_actors):
      program.add_node(lp.PyNode(actor, replay_handle, actor_id))
  program.add_node(lp.CourierNode(Learner, replay_handle, num_steps), label="learner")
  return program


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  program = make_program(num_actors=_NUM_ACTORS.value, num_steps=_NUM_STEPS.value)
  controller = lp.launch(program)
  controller.wait()  # raises lp.NodeFailedError if a node failed


if __name__ == "__main__":
  app.run(main)

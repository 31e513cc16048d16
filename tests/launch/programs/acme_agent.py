"""An agent program shaped as Acme builds its distributed agents
(acme/jax/experiments/make_distributed_experiment.py), for tests/test_acme_style.py.

- `counter`: a counter node, and a StepsLimiter added to the same group with
  `label='counter'`, which calls lp.stop() once enough actor steps are
  counted;
- `replay`: a lp.ReverbNode whose handle is made before the node is added;
- `learner`: samples the replay, counts its steps, serves its variables
  (optionally colocated with the replay in a MultiThreadingColocation);
- `actor`: environment loops that insert steps and follow the learner's
  variables, some colocated in a MultiThreadingColocation;
- `evaluator`: two evaluators colocated in a MultiThreadingColocation.

Every loop runs under a runtime_terminator as Acme's do: a stop handler that
raises SystemExit in the loop's thread with PyThreadState_SetAsyncExc. The
counter writes what it counted, and what the nodes checked, to --results
when the program stops. The main returns right after lp.launch(program).

  python tests/launch/programs/acme_agent.py --results=/tmp/results.json
  lp launch --mode=multiprocess tests/launch/programs/acme_agent.py -- --results=...
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
from absl import app, flags

import launchpad as lp
from launchpad import replay
from launchpad.replay import rate_limiters, selectors

_RESULTS = flags.DEFINE_string("results", None, "Where the counter writes its counts.")
_COLOCATE = flags.DEFINE_bool(
  "colocate_learner_and_replay", False, "Learner and replay in one MultiThreadingColocation."
)
MAX_ACTOR_STEPS = 200
NUM_ACTORS = 3  # one alone, two colocated
NUM_EVALUATORS = 2
EPISODE_STEPS = 10
# Bound on every wait and every loop: a broken run ends instead of hanging.
WAIT_SECONDS = 60.0


@contextlib.contextmanager
def runtime_terminator() -> Iterator[None]:
  """Acme's acme.utils.signals.runtime_terminator: on stop, SystemExit in this thread."""
  worker = threading.get_ident()

  def handler() -> None:
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(
      ctypes.c_ulong(worker), ctypes.py_object(SystemExit)
    )
    assert count < 2, "stopping the worker failed"

  lp.register_stop_handler(handler)
  yield
  lp.unregister_stop_handler(handler)


def pause() -> None:
  """Acme's loops sleep between polls; short here."""
  time.sleep(0.01)


class Counter:
  """acme.utils.counting.Counter, served: counts by key; writes them at the stop."""

  def __init__(self, results: str | None) -> None:
    self._results = results
    self._lock = threading.Lock()
    self._counts: dict[str, int] = {}

  def increment(self, **counts: int) -> dict[str, int]:
    with self._lock:
      for key, value in counts.items():
        self._counts[key] = self._counts.get(key, 0) + value
      return dict(self._counts)

  def get_counts(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def run(self) -> None:
    lp.wait_for_stop()
    if self._results:
      path = f"{self._results}.partial"
      with open(path, "w") as f:
        json.dump(self.get_counts(), f)
      os.replace(path, self._results)


class StepsLimiter:
  """acme.utils.lp_utils.StepsLimiter: stops the experiment after `max_steps`
  actor steps. So that every check below has something to check, it also
  waits until the learner and every evaluator have reported once."""

  def __init__(self, counter, max_steps: int) -> None:
    self._counter = counter
    self._max_steps = max_steps

  def run(self) -> None:
    with runtime_terminator():
      deadline = time.monotonic() + WAIT_SECONDS
      while time.monotonic() < deadline:
        counts = self._counter.get_counts()
        evaluated = all(counts.get(f"evaluator_{i}_episodes", 0) for i in range(NUM_EVALUATORS))
        learned = counts.get("learner_steps", 0) > 0
        if counts.get("actor_steps", 0) > self._max_steps and evaluated and learned:
          lp.stop()  # and keep polling, as Acme's does, until the terminator ends this thread
        pause()
      raise TimeoutError(f"the experiment did not reach its limits in {WAIT_SECONDS} s: {counts}")


def build_replay() -> list[replay.Table]:
  """What the builder's make_replay_tables gives; called inside the replay node."""
  return [
    replay.Table(
      "priority_table",
      selectors.Uniform(),
      selectors.Fifo(),
      1000,
      rate_limiters.MinSize(1),
    )
  ]


class Learner:
  """Samples the replay, checks every sample, and versions its variables."""

  def __init__(self, replay_client: replay.Client, counter) -> None:
    self._replay = replay_client
    self._counter = counter
    self._version = 0

  def step(self) -> int:
    [sample] = self._replay.sample("priority_table", timeout=WAIT_SECONDS)
    data = sample.data
    good = bool(np.array_equal(data["observation"], np.full(4, data["step"] * 2.0)))
    self._version += 1
    self._counter.increment(learner_steps=1, learner_bad_samples=0 if good else 1)
    return self._version

  def get_variables(self, names=()) -> dict:
    version = self._version
    return {"version": version, "policy": np.full(4, float(version))}

  def run(self) -> None:
    with runtime_terminator():
      for _ in range(100_000):
        self.step()


class EnvironmentLoop:
  """An actor (or, with `evaluator_id`, an evaluator): runs episodes with the
  learner's latest variables, inserting steps into the replay."""

  def __init__(self, actor_id, replay_client, learner, counter, evaluator_id=None) -> None:
    self._actor_id = actor_id
    self._replay = replay_client
    self._learner = learner
    self._counter = counter
    self._evaluator_id = evaluator_id
    self._version = 0

  def run_episode(self, step: int) -> int:
    variables = self._learner.get_variables([])
    regressed = int(variables["version"] < self._version)
    self._version = variables["version"]
    consistent = int(np.all(variables["policy"] == variables["version"]))
    for _ in range(EPISODE_STEPS):
      if self._evaluator_id is None:
        observation = {"observation": np.full(4, step * 2.0), "step": np.int64(step)}
        self._replay.insert(observation, {"priority_table": 1.0}, timeout=WAIT_SECONDS)
      step += 1
    if self._evaluator_id is None:
      self._counter.increment(actor_steps=EPISODE_STEPS, actor_episodes=1)
    else:
      self._counter.increment(**{f"evaluator_{self._evaluator_id}_episodes": 1})
    self._counter.increment(variables_regressed=regressed, variables_inconsistent=1 - consistent)
    return step

  def run(self) -> None:
    step = 0
    with runtime_terminator():
      for _ in range(100_000):
        step = self.run_episode(step)
        pause()


def make_program(results: str | None = None, colocate_learner_and_replay: bool = False):
  program = lp.Program(name="agent")
  replay_node = lp.ReverbNode(build_replay)
  replay_handle = replay_node.create_handle()
  counter = program.add_node(lp.CourierNode(Counter, results), label="counter")
  program.add_node(lp.CourierNode(StepsLimiter, counter, MAX_ACTOR_STEPS), label="counter")

  learner_node = lp.CourierNode(Learner, replay_handle, counter)
  learner = learner_node.create_handle()
  if colocate_learner_and_replay:
    program.add_node(lp.MultiThreadingColocation([learner_node, replay_node]), label="learner")
  else:
    program.add_node(replay_node, label="replay")
    with program.group("learner"):
      program.add_node(learner_node)

  with program.group("actor"):
    program.add_node(lp.CourierNode(EnvironmentLoop, 0, replay_handle, learner, counter))
    colocated = [
      lp.CourierNode(EnvironmentLoop, actor_id, replay_handle, learner, counter)
      for actor_id in range(1, NUM_ACTORS)
    ]
    program.add_node(lp.MultiThreadingColocation(colocated))

  evaluators = [
    lp.CourierNode(EnvironmentLoop, -1, replay_handle, learner, counter, evaluator_id=i)
    for i in range(NUM_EVALUATORS)
  ]
  program.add_node(lp.MultiThreadingColocation(evaluators), label="evaluator")
  return program


def main(argv) -> None:
  del argv
  program = make_program(_RESULTS.value, _COLOCATE.value)
  lp.launch(program, xm_resources=None)


if __name__ == "__main__":
  app.run(main)

"""examples/replay_actors_learner.py: as a script (threads), under `lp launch`, and in test mode."""

import functools
import importlib.util
import os
import pathlib
import re
import sys
import types
from unittest import mock

import numpy as np
import pytest
from absl import flags

from tests.examples.commands import run_ok

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "replay_actors_learner.py"
# A run takes a few seconds; this only bounds a hang.
SCRIPT_TIMEOUT_SECONDS = 60.0
# Bound on every wait for a program or a call in test mode.
WAIT_SECONDS = 30.0

_SUMMARY = re.compile(
  r"Learner: (\d+) steps, (\d+) samples, (\d+) transitions inserted, "
  r"(\d+) priority updates, last loss (\S+)$"
)


def _load_example() -> types.ModuleType:
  """Imports the example once, its absl flags defined on a FlagValues of their own.

  Its --num_steps would otherwise clash with consumer_producers' (loaded by
  test_examples.py in the same session); the tests do not use the flags.
  """
  module_name = "launchpad_examples_replay_actors_learner"
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, EXAMPLE)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  own_flags = flags.FlagValues()
  define = functools.partial(flags.DEFINE_integer, flag_values=own_flags)
  with mock.patch.object(flags, "DEFINE_integer", define):
    spec.loader.exec_module(module)
  sys.modules[module_name] = module
  return module


example = _load_example()


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
  return run_ok(command, SCRIPT_TIMEOUT_SECONDS, env)


def _check_summary(stdout: str, num_steps: int) -> None:
  summaries = [m for line in stdout.splitlines() if (m := _SUMMARY.search(line))]
  assert len(summaries) == 1, stdout
  steps, samples, inserted, updates, loss = summaries[0].groups()
  assert int(steps) == num_steps
  assert int(samples) == num_steps * example.BATCH_SIZE
  assert int(inserted) >= example.MIN_SIZE_TO_SAMPLE
  assert 1 <= int(updates) <= int(samples)
  assert np.isfinite(float(loss))


def test_script_runs_in_threads_and_stops_itself():
  stdout = _run([sys.executable, str(EXAMPLE), "--num_actors=3", "--num_steps=15"])
  _check_summary(stdout, num_steps=15)


def test_script_runs_under_lp_launch_in_processes(tmp_path):
  lp = pathlib.Path(sys.executable).parent / "lp"
  if not lp.exists():
    pytest.skip(f"no lp command next to {sys.executable}")
  env = {**os.environ, "LAUNCHPAD_HOME": str(tmp_path / "lphome")}
  stdout = _run(
    [
      str(lp),
      "launch",
      "--mode=multiprocess",
      str(EXAMPLE),
      "--",
      "--num_actors=2",
      "--num_steps=10",
    ],
    env=env,
  )
  _check_summary(stdout, num_steps=10)


def test_learner_steps_update_the_priorities(lp_launch):
  # Drive the learner from the test: its run() would stop the program.
  program = example.make_program(num_actors=2, num_steps=1000)
  (learner_node,) = program.groups["learner"]
  learner_node.disable_run()
  (replay_node,) = program.groups["replay"]
  lp_launch(program)
  learner = learner_node.create_handle().dereference().with_timeout(WAIT_SECONDS)
  replay_client = replay_node.create_handle().dereference()

  losses = [learner.step() for _ in range(5)]
  assert all(np.isfinite(losses))

  info = replay_client.server_info(timeout=WAIT_SECONDS)[example.TABLE]
  assert info["num_inserts"] >= example.MIN_SIZE_TO_SAMPLE
  assert info["num_samples"] == 5 * example.BATCH_SIZE
  assert 1 <= info["num_updates"] <= 5 * example.BATCH_SIZE
  assert info["sampler"] == {"type": "Prioritized", "priority_exponent": 0.8}

  # The actors insert with priority 1.0; the learner sets |error| + 1e-3.
  # Sampled priorities that are not 1.0 can only come from the learner.
  batch = replay_client.sample_batch(example.TABLE, example.BATCH_SIZE, timeout=WAIT_SECONDS)
  priorities = batch.info.priority
  assert len(priorities) == example.BATCH_SIZE
  assert np.all(priorities > 0)
  assert np.any(priorities != 1.0), priorities

"""examples/dqn: its numpy pieces, and the program's wiring in test mode, in threads and in processes.

These runs are a few hundred environment steps: they check that every node
does its part (data reaches replay, the learner steps on its replay stream,
updates priorities and broadcasts its parameters, the counter adds up steps, the evaluator records returns, draws the curve and
stops the program at the target or the step budget), not that the agent
learns (docs/examples.md).
"""

import csv
import dataclasses
import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

import launchpad as lp
from tests.examples.commands import run_ok

pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "dqn"
# A script run takes a few seconds; this only bounds a hang.
SCRIPT_TIMEOUT_SECONDS = 60.0
# Bound on every wait for a program or a call in test mode.
WAIT_SECONDS = 30.0


def _load_package() -> None:
  """Makes examples/dqn importable as `dqn`, as launch.py does, without touching sys.path.

  (`examples` here is this test package's own name.)
  """
  if "dqn" in sys.modules:
    return
  spec = importlib.util.spec_from_file_location(
    "dqn", PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)]
  )
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules["dqn"] = module
  spec.loader.exec_module(module)


_load_package()

from dqn import counter, evaluator, losses, network, program, replay_table  # noqa: E402
from dqn import learner as learner_module  # noqa: E402
from dqn.config import DQNConfig  # noqa: E402
from dqn.transitions import NStepTransitions, stack  # noqa: E402

# Learning starts after 100 transitions; nothing stops the program unless a test says so.
SMALL = DQNConfig(
  min_replay_size=100,
  eval_period=200,
  max_env_steps=10**9,
  target_return=1e9,
  params_publish_period=5,
)


# The numpy pieces.


def test_mlp_gradients_match_finite_differences():
  rng = np.random.default_rng(0)
  params = [p.astype(np.float64) for p in network.init_mlp([3, 5, 4, 2], rng)]
  x = rng.normal(size=(6, 3))
  output_weights = rng.normal(size=(6, 2))

  def loss(ps):  # a linear function of the output: its gradient is output_weights
    return float(np.sum(network.forward(ps, x) * output_weights))

  grads = network.gradients(params, network.forward_with_activations(params, x), output_weights)
  for p, g in zip(params, grads, strict=True):
    for index in np.ndindex(p.shape):
      saved = p[index]
      p[index] = saved + 1e-6
      up = loss(params)
      p[index] = saved - 1e-6
      down = loss(params)
      p[index] = saved
      assert g[index] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-6)


def test_adam_minimises_a_regression_loss():
  rng = np.random.default_rng(1)
  params = network.init_mlp([2, 16, 1], rng)
  optimizer = network.Adam(params, learning_rate=1e-2)
  x = rng.normal(size=(64, 2)).astype(np.float32)
  y = (x[:, :1] - 2 * x[:, 1:]).astype(np.float32)

  def step() -> float:
    activations = network.forward_with_activations(params, x)
    error = activations[-1] - y
    optimizer.update(params, network.gradients(params, activations, 2 * error / len(x)))
    return float(np.mean(error**2))

  first = step()
  for _ in range(300):
    last = step()
  assert last < 0.05 * first


def test_n_step_transitions_discount_and_stop_at_episode_ends():
  adder = NStepTransitions(num_envs=2, n_step=2, discount=0.5)
  obs = np.array([[0.0], [10.0]])
  done = np.array([False, False])

  def step(t, terminated=done, truncated=done):
    return adder.add(obs + t, np.array([t, t]), np.ones(2), obs + t + 1, terminated, truncated)

  assert step(0) == []  # two steps pending in each environment
  full = stack(step(1))  # each environment completes its 2-step transition from t=0
  np.testing.assert_allclose(full.observation[:, 0], [0.0, 10.0])
  np.testing.assert_allclose(full.reward, [1.5, 1.5])  # 1 + 0.5 * 1
  np.testing.assert_allclose(full.discount, [0.25, 0.25])
  np.testing.assert_allclose(full.next_observation[:, 0], [2.0, 12.0])

  # Environment 0 terminates (no value after it), environment 1 hits a time limit.
  ends = stack(step(2, terminated=np.array([True, False]), truncated=np.array([False, True])))
  np.testing.assert_allclose(ends.observation[:, 0], [1.0, 2.0, 11.0, 12.0])
  np.testing.assert_allclose(ends.reward, [1.5, 1.0, 1.5, 1.0])
  np.testing.assert_allclose(ends.discount, [0.0, 0.0, 0.25, 0.5])
  np.testing.assert_allclose(ends.next_observation[:, 0], [3.0, 3.0, 13.0, 13.0])
  assert step(3) == []  # new episodes start with nothing pending


def test_td_errors_are_double_q_learning_errors():
  # One linear layer, Q(s) = s: the online network picks the next action,
  # the target network (Q(s) = 2s) values it.
  params = [np.eye(2, dtype=np.float32), np.zeros(2, np.float32)]
  target = [2 * np.eye(2, dtype=np.float32), np.zeros(2, np.float32)]
  batch = stack(NStepTransitions(1, 1, 0.9).add(*_one_step([1.0, 3.0], 0, 0.5, [4.0, 1.0])))
  # Q(s, 0) = 1; the next action is argmax(4, 1) = 0, worth 2 * 4 = 8 to the target.
  np.testing.assert_allclose(losses.td_errors(params, target, batch), [0.5 + 0.9 * 8 - 1.0])
  grads, errors, loss = losses.dqn_gradients(params, target, batch, np.ones(1, np.float32))
  np.testing.assert_allclose(errors, [6.7])
  assert loss == pytest.approx(6.7 - 0.5)  # Huber, linear beyond 1
  np.testing.assert_allclose(grads[1], [-1.0, 0.0])  # clipped error, taken action only


def _one_step(observation, action, reward, next_observation):
  return (
    np.array([observation]),
    np.array([action]),
    np.array([reward]),
    np.array([next_observation]),
    np.array([False]),
    np.array([False]),
  )


# The program in test mode.


def test_program_has_every_node():
  dqn = program.make_program(SMALL, num_actors=3)
  assert {label: len(nodes) for label, nodes in dqn.groups.items()} == {
    "replay": 1,
    "counter": 1,
    "params": 1,
    "learner": 1,
    "actor": 3,
    "evaluator": 1,
  }


def test_actors_fill_replay_and_the_learner_and_evaluator_use_it(lp_launch, tmp_path):
  # The learner and the evaluator are driven from the test; the actors run.
  dqn = program.make_program(SMALL, num_actors=2, output_dir=str(tmp_path))
  [learner_node], [evaluator_node] = dqn.groups["learner"], dqn.groups["evaluator"]
  learner_node.disable_run()
  evaluator_node.disable_run()
  lp_launch(dqn)
  learner = learner_node.create_handle().dereference().with_timeout(WAIT_SECONDS)
  evaluator_client = evaluator_node.create_handle().dereference().with_timeout(WAIT_SECONDS)
  replay_client = dqn.groups["replay"][0].create_handle().dereference()
  broadcast = dqn.groups["params"][0].create_handle().dereference()

  # The actors act with the learner's first version, published before it learns.
  first_version, _ = broadcast.latest(timeout=WAIT_SECONDS)
  assert first_version == 1
  # Each step takes a batch of the learner's replay stream; the first waits for 100 transitions.
  losses_seen = [learner.step() for _ in range(SMALL.params_publish_period)]
  assert all(np.isfinite(losses_seen))
  steps, params = learner.get_params()
  assert steps == SMALL.params_publish_period
  assert [p.shape for p in params] == [(4, 64), (64,), (64, 64), (64,), (64, 2), (2,)]
  # The step that ends a publish period published the parameters it left.
  version, published = broadcast.latest(min_version=2, timeout=WAIT_SECONDS)
  assert version == 2
  for got, want in zip(published, params, strict=True):
    np.testing.assert_array_equal(got, want)

  info = replay_client.server_info(timeout=WAIT_SECONDS)[replay_table.TABLE]
  assert info["num_inserts"] >= SMALL.min_replay_size
  # The stream samples at most its bound of batches ahead of the steps taken.
  taken = steps * SMALL.batch_size
  ahead = learner_module.STREAM_BATCHES_AHEAD * SMALL.batch_size
  assert taken <= info["num_samples"] <= taken + ahead
  assert info["num_updates"] >= 1
  assert info["sampler"]["type"] == "Prioritized"
  sample = replay_client.sample_batch(replay_table.TABLE, 8, timeout=WAIT_SECONDS)
  assert sample.data["observation"].shape == (len(sample.info.key), 4)
  assert set(sample.data) == {"observation", "action", "reward", "discount", "next_observation"}

  evaluation = evaluator_client.evaluate()
  assert evaluation.learner_steps == steps
  assert evaluation.env_steps > 0
  assert evaluation.mean_return >= 8  # no CartPole episode is shorter
  rows = _read_rows(tmp_path / evaluator.EVALUATIONS_FILE)
  assert [int(row["learner_steps"]) for row in rows] == [steps]


def test_evaluator_stops_the_program_at_the_step_budget_after_a_last_evaluation(
  lp_launch, tmp_path, capsys
):
  config = dataclasses.replace(SMALL, max_env_steps=600)
  controller = lp_launch(program.make_program(config, num_actors=2, output_dir=str(tmp_path)))
  assert controller.wait(timeout=WAIT_SECONDS)
  assert controller.failures() == []
  out = capsys.readouterr().out
  assert "reached the budget of 600; stopping the program" in out
  assert "reached the target return" not in out
  rows = _read_rows(tmp_path / evaluator.EVALUATIONS_FILE)
  assert rows and all(float(row["mean_return"]) >= 8 for row in rows)
  assert int(rows[-1]["env_steps"]) >= 600  # the last evaluation came after the budget
  assert (tmp_path / evaluator.CURVE_FILE).stat().st_size > 0


def test_counter_adds_up_what_every_caller_sends(lp_launch):
  counter_program = lp.Program("counter")
  handle = counter_program.add_node(lp.CourierNode(counter.Counter))
  lp_launch(counter_program)
  client = handle.dereference().with_timeout(WAIT_SECONDS)
  assert client.get_counts() == {"env_steps": 0}
  assert client.increment(env_steps=4, learner_steps=1) == {"env_steps": 4, "learner_steps": 1}
  futures = [client.futures.increment(env_steps=1) for _ in range(20)]
  assert sorted(f.result(timeout=WAIT_SECONDS)["env_steps"] for f in futures) == list(range(5, 25))
  assert client.get_counts() == {"env_steps": 24, "learner_steps": 1}


# The script, as a user runs it.


def _lp_launch(*args: str, env: dict[str, str] | None = None) -> str:
  lp = pathlib.Path(sys.executable).parent / "lp"
  if not lp.exists():
    pytest.skip(f"no lp command next to {sys.executable}")
  return run_ok([str(lp), "launch", *args], SCRIPT_TIMEOUT_SECONDS, env)


def test_script_in_threads_stops_at_the_target_return(tmp_path):
  # Any return reaches a target of 0: the first evaluation stops the program.
  out = _lp_launch(
    "--mode=threads",
    "examples/dqn/launch.py",
    "--",
    "--num_actors=2",
    "--min_replay_size=100",
    "--target_return=0",
    f"--output_dir={tmp_path}",
    env={**os.environ, "LAUNCHPAD_HOME": str(tmp_path / "lphome")},
  )
  assert "Evaluator: reached the target return 0 after" in out
  assert len(_read_rows(tmp_path / evaluator.EVALUATIONS_FILE)) == 1
  assert (tmp_path / evaluator.CURVE_FILE).stat().st_size > 0


def test_script_in_processes_writes_the_curve_into_the_run_directory(tmp_path):
  run_dir = tmp_path / "run"
  out = _lp_launch(
    "--mode=multiprocess",
    f"--log-dir={run_dir}",
    "examples/dqn/launch.py",
    "--",
    "--num_actors=2",
    "--min_replay_size=100",
    "--eval_period=200",
    "--max_env_steps=800",
    "--target_return=1000",
    env={**os.environ, "LAUNCHPAD_HOME": str(tmp_path / "lphome")},
  )
  assert "reached the budget of 800; stopping the program" in out
  [learner_line] = [line for line in out.splitlines() if "Learner: stopped after" in line]
  assert int(learner_line.split()[-2]) > 0, learner_line
  rows = _read_rows(run_dir / evaluator.EVALUATIONS_FILE)
  assert rows and int(rows[-1]["env_steps"]) >= 800
  assert (run_dir / evaluator.CURVE_FILE).stat().st_size > 0


def _read_rows(path: pathlib.Path) -> list[dict[str, str]]:
  with path.open(newline="") as f:
    return list(csv.DictReader(f))

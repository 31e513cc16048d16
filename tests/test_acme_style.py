"""An agent program shaped as Acme's distributed agents, run as Acme runs
them: in local_mt from a main that returns right after lp.launch, in
local_mp, and under `lp launch --mode=multiprocess`; and tested the way
Acme's agent_distributed tests do (test_mt, the learner's run disabled and
stepped through its handle).

The program (tests/launch/programs/acme_agent.py) ends by itself: its
StepsLimiter calls lp.stop(), and every loop is ended by a stop handler that
raises SystemExit in its thread. It must end with status 0, every node
stopped (none failed), and the counts its nodes checked must hold.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import launchpad as lp
from tests.launch.programs import acme_agent

ROOT = pathlib.Path(__file__).resolve().parents[1]
AGENT = ROOT / "tests" / "launch" / "programs" / "acme_agent.py"
# A run takes a few seconds; this bounds a hang.
RUN_SECONDS = 120.0
TIMEOUT = 60.0


def check_counts(results: pathlib.Path) -> None:
  """What the counter wrote at the stop: every role did its part, every
  check of the nodes held."""
  assert results.exists(), "the counter wrote no results: it did not see the stop"
  counts = json.loads(results.read_text())
  assert counts["actor_steps"] > acme_agent.MAX_ACTOR_STEPS, counts
  assert counts["actor_steps"] == counts["actor_episodes"] * acme_agent.EPISODE_STEPS, counts
  assert counts["learner_steps"] > 0, counts
  assert counts["learner_bad_samples"] == 0, counts
  for i in range(acme_agent.NUM_EVALUATORS):
    assert counts[f"evaluator_{i}_episodes"] > 0, counts
  assert counts["variables_regressed"] == 0, counts
  assert counts["variables_inconsistent"] == 0, counts


def run(command: list[str], home: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "LAUNCHPAD_HOME": str(home)}
  try:
    result = subprocess.run(
      command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_SECONDS, env=env
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"{' '.join(command)} did not end within {RUN_SECONDS} s: {e}")
  assert result.returncode == 0, (
    f"{' '.join(command)} exited with {result.returncode}\n"
    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  )
  assert "failed" not in result.stderr.lower(), result.stderr
  return result


@pytest.mark.parametrize(
  "flags",
  [
    ["--lp_launch_type=local_mt"],
    ["--lp_launch_type=local_mt", "--colocate_learner_and_replay"],
    ["--lp_launch_type=local_mp"],
    ["--lp_launch_type=local_mp", "--colocate_learner_and_replay"],
  ],
  ids=["local_mt", "local_mt-colocated", "local_mp", "local_mp-colocated"],
)
def test_agent_script_ends_by_itself_with_status_0(flags, tmp_path):
  results = tmp_path / "results.json"
  run([sys.executable, str(AGENT), f"--results={results}", *flags], tmp_path)
  check_counts(results)


def test_agent_under_lp_launch_multiprocess(tmp_path):
  results = tmp_path / "results.json"
  command = [sys.executable, "-m", "launchpad.cli", "launch", "--mode=multiprocess", str(AGENT)]
  run([*command, "--", f"--results={results}"], tmp_path)
  check_counts(results)


@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_agent_program_in_process_every_node_stops(launch_type, tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  results = tmp_path / "results.json"
  program = acme_agent.make_program(str(results))
  controller = lp.launch(program, launch_type, terminal="output_to_files")
  try:
    assert controller.wait(TIMEOUT) is True
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  states = {node.node: node.state for node in controller.status().nodes}
  assert set(states.values()) == {"finished"}, states
  check_counts(results)


def test_acme_distributed_test_style_learner_stepped_through_its_handle(tmp_path):
  # As Acme's agent_distributed tests do: disable the learner's run, launch
  # in test_mt, and step the learner through its handle.
  program = acme_agent.make_program(str(tmp_path / "results.json"))
  (learner_node,) = program.groups["learner"]
  learner_node.disable_run()
  controller = lp.launch(program, launch_type="test_mt")
  try:
    learner = learner_node.create_handle().dereference().with_timeout(TIMEOUT)
    versions = [learner.step() for _ in range(5)]
    assert versions == [1, 2, 3, 4, 5]
    assert learner.get_variables()["version"] == 5
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []

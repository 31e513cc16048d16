"""ReplayNode in programs: an actor inserts, a learner samples and updates priorities.

Run as threads (test_mt) and as processes (local_mp). Node functions are
module-level so that node processes import them by reference.
"""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

import launchpad as lp
from launchpad import replay
from launchpad.nodes.replay import ReplayHandle
from launchpad.replay import Table, TableClosedError
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

TIMEOUT = 30.0  # bound on every wait (processes take a moment to start)
NUM_STEPS = 10
LEARNER_SAMPLES = 32


def make_tables() -> list[Table]:
  return [
    Table("experience", sel.Prioritized(1.0), sel.Fifo(), 100, rl.MinSize(1)),
    Table.queue("actor_done", 1),
    Table.queue("learner_done", 1),
  ]


def actor(replay_client: replay.Client) -> None:
  """Inserts NUM_STEPS steps in one batch, then says so."""
  steps = [{"obs": np.full(4, i, dtype=np.float32), "step": np.int64(i)} for i in range(NUM_STEPS)]
  replay_client.insert_batch(steps, {"experience": 1.0}, timeout=TIMEOUT)
  replay_client.insert({"done": True}, {"actor_done": 1.0}, timeout=TIMEOUT)


def learner(replay_client: replay.Client) -> None:
  """Waits for the actor, samples a batch, sets each sampled item's priority to step + 0.5."""
  replay_client.sample("actor_done", timeout=TIMEOUT)
  batch = replay_client.sample_batch("experience", LEARNER_SAMPLES, timeout=TIMEOUT)
  updates = {
    int(key): float(step) + 0.5
    for key, step in zip(batch.info.key, batch.data["step"], strict=True)
  }
  replay_client.mutate_priorities("experience", updates=updates)
  replay_client.insert(
    {"sampled": len(batch.info.key), "updated": np.array(sorted(updates), dtype=np.uint64)},
    {"learner_done": 1.0},
    timeout=TIMEOUT,
  )


def build_program(name: str, tables) -> tuple[lp.Program, ReplayHandle]:
  program = lp.Program(name)
  replay_handle = program.add_node(lp.ReplayNode(tables))
  program.add_node(lp.PyNode(actor, replay_handle), label="actor")
  program.add_node(lp.PyNode(learner, replay_handle), label="learner")
  return program, replay_handle


def check_results(client: replay.Client) -> None:
  """What the actor and learner did, seen through the replay node."""
  [report] = client.sample("learner_done", timeout=TIMEOUT)
  assert report.data["sampled"] == LEARNER_SAMPLES
  updated = set(report.data["updated"].tolist())
  assert 1 <= len(updated) <= NUM_STEPS
  info = client.server_info()
  experience = info["experience"]
  assert experience["size"] == NUM_STEPS
  assert experience["num_inserts"] == NUM_STEPS
  assert experience["num_samples"] == LEARNER_SAMPLES
  assert experience["num_updates"] == len(updated)
  # Every item, once: its priority is what the learner set, or still 1.0.
  seen = {}
  for _ in range(50):
    batch = client.sample_batch("experience", 64, timeout=TIMEOUT)
    for key, priority, step in zip(
      batch.info.key.tolist(),
      batch.info.priority.tolist(),
      batch.data["step"].tolist(),
      strict=True,
    ):
      seen[key] = (priority, step)
    if len(seen) == NUM_STEPS:
      break
  assert len(seen) == NUM_STEPS
  assert sorted(step for _, step in seen.values()) == list(range(NUM_STEPS))
  for key, (priority, step) in seen.items():
    assert priority == (step + 0.5 if key in updated else 1.0), (key, priority, step)


def test_replay_node_with_actor_and_learner_in_threads(lp_launch):
  program, replay_handle = build_program("replay_mt", make_tables())
  lp_launch(program)  # test_mt
  client = replay_handle.dereference()
  assert isinstance(client, replay.Client)
  check_results(client)


def test_replay_node_builds_tables_from_a_function(lp_launch):
  program, replay_handle = build_program("replay_fn", make_tables)
  controller = lp_launch(program)
  check_results(replay_handle.dereference())
  # Stopping the program closes the tables: a blocked sampler is told so.
  blocked = replay_handle.dereference()
  outcome = {}

  def sample():
    try:
      blocked.sample("actor_done", timeout=TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the test inspects it
      outcome["error"] = e

  sampler = threading.Thread(target=sample)
  sampler.start()
  client = replay_handle.dereference()
  stats = None
  for _ in range(int(TIMEOUT / 0.005)):  # polls until the sample is seen blocking
    stats = client.server_info()["actor_done"]["rate_limiter"]["sample_stats"]
    if stats["pending"] == 1:
      break
    threading.Event().wait(0.005)
  assert stats["pending"] == 1
  controller.stop()
  sampler.join(TIMEOUT)
  assert not sampler.is_alive()
  # The stop closes the tables, and the node drains calls before its server
  # stops, so the sampler learns why it was woken.
  assert isinstance(outcome.get("error"), TableClosedError), outcome


@pytest.fixture
def processes(tmp_path, monkeypatch):
  """local_mp launches under a temporary $LAUNCHPAD_HOME; every program is stopped at teardown."""
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "lphome"))
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  controllers = []

  def _launch(program):
    controller = lp.launch(
      program, launch_type="local_mp", terminal="output_to_files", grace_period=2.0
    )
    controllers.append(controller)
    return controller

  yield _launch
  for controller in controllers:
    controller.stop(timeout=TIMEOUT)
  for sig, handler in handlers.items():
    signal.signal(sig, handler)


def test_replay_node_with_actor_and_learner_in_processes(processes):
  program, replay_handle = build_program("replay_mp", make_tables())
  controller = processes(program)
  client = replay_handle.dereference()
  check_results(client)
  assert controller.wait(0) is False  # the replay node serves until the program stops
  controller.stop(timeout=TIMEOUT)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


def test_bad_tables_are_refused_when_the_node_is_made():
  with pytest.raises(ValueError, match="unique"):
    lp.ReplayNode([Table.queue("q", 1), Table.queue("q", 2)])
  with pytest.raises(TypeError, match="Table"):
    lp.ReplayNode(["not a table"])
  node = lp.ReplayNode(make_tables())
  program = lp.Program("labels")
  handle = program.add_node(node)
  assert handle.node_name == "replay[0]"
  assert isinstance(handle, ReplayHandle)


def waiting_learner(replay_client: replay.Client) -> None:
  """Blocks sampling a table nothing is inserted into, until the program stops."""
  replay_client.sample("experience", timeout=TIMEOUT)


def stopper(replay_client: replay.Client) -> None:
  """Stops the program once the learner is seen waiting."""
  for _ in range(int(TIMEOUT / 0.005)):  # polls the server's own count of waiting samplers
    stats = replay_client.server_info()["experience"]["rate_limiter"]["sample_stats"]
    if stats["pending"] == 1:
      break
    threading.Event().wait(0.005)
  lp.stop()


@pytest.mark.parametrize("launch_type", ["test_mt", "local_mp"])
def test_a_learner_blocked_in_sample_when_the_program_stops_is_not_a_failure(
  launch_type, tmp_path, monkeypatch
):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  program = lp.Program("stop_while_sampling")
  replay_handle = program.add_node(lp.ReplayNode(make_tables))
  program.add_node(lp.PyNode(waiting_learner, replay_handle), label="learner")
  program.add_node(lp.PyNode(stopper, replay_handle), label="stopper")
  controller = lp.launch(program, launch_type=launch_type, terminal="output_to_files")
  try:
    assert controller.wait(TIMEOUT)  # raises NodeFailedError if the learner counted as failed
  finally:
    controller.stop()
  assert controller.failures() == []

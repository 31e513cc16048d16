"""lp.ReverbNode, Launchpad's replay node: over this library's replay tables,
and over DeepMind Reverb's when dm-reverb is installed (the `[reverb]` extra;
those tests skip without it).

Node functions are module-level so that node processes import them by
reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import time

import numpy as np
import pytest

import launchpad as lp
from launchpad import errors, replay
from launchpad.replay import Table

TIMEOUT = 60.0  # a loaded machine imports TensorFlow and Reverb slowly
NUM_ITEMS = 5

# Set by CI's reverb run: a missing dm-reverb fails these tests instead of skipping them.
REQUIRED = "LAUNCHPAD_TEST_REQUIRE_REVERB"
needs_reverb = pytest.mark.skipif(
  importlib.util.find_spec("reverb") is None and not os.environ.get(REQUIRED),
  reason="dm-reverb is not installed (pip install 'launchpad-rl[reverb]')",
)


@pytest.fixture(autouse=True)
def launchpad_home(tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "home"))


def launch(program, launch_type):
  return lp.launch(program, launch_type, terminal="output_to_files", grace_period=5.0)


# This library's tables.


def replay_tables() -> list[Table]:
  return [Table.queue("experience", 100), Table.queue("done", 1)]


def replay_actor(client: replay.Client) -> None:
  for i in range(NUM_ITEMS):
    client.insert({"step": np.int64(i)}, {"experience": 1.0}, timeout=TIMEOUT)
  client.insert({"done": True}, {"done": 1.0}, timeout=TIMEOUT)


def replay_program(checkpoint_ctor=None):
  program = lp.Program("reverb_on_replay")
  node = lp.ReverbNode(replay_tables, checkpoint_ctor=checkpoint_ctor)
  handle = program.add_node(node, label="replay")
  program.add_node(lp.PyNode(replay_actor, handle), label="actor")
  return program, handle


def directory(path: str) -> str:
  return path


@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_reverb_node_over_replay_tables_is_a_replay_node(launch_type, tmp_path):
  checkpoints = tmp_path / "checkpoints"
  program, handle = replay_program(functools.partial(directory, str(checkpoints)))
  controller = launch(program, launch_type)
  try:
    client = handle.dereference()
    assert isinstance(client, replay.Client)
    client.sample("done", timeout=TIMEOUT)
    steps = [int(client.sample("experience", timeout=TIMEOUT)[0].data["step"]) for _ in range(5)]
    assert steps == list(range(NUM_ITEMS))
    client.checkpoint()
    assert any(checkpoints.iterdir()), "no checkpoint in the directory checkpoint_ctor gave"
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def no_tables():
  return [object()]


def test_reverb_node_refuses_other_tables_naming_the_node():
  program = lp.Program("bad_tables")
  program.add_node(lp.ReverbNode(no_tables), label="replay")
  controller = lp.launch(program, "test_mt")
  with pytest.raises(lp.NodeFailedError, match=r"ReverbNode replay\[0\].*returned object.*reverb"):
    controller.wait(TIMEOUT)


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"priority_tables_fn": [1]}, TypeError, "function of no arguments"),
    ({"priority_tables_fn": replay_tables, "checkpoint_ctor": "dir"}, TypeError, "checkpoint_ctor"),
    (
      {"priority_tables_fn": replay_tables, "checkpoint_time_delta_minutes": 0},
      ValueError,
      "checkpoint_time_delta_minutes must be a number of minutes > 0",
    ),
  ],
)
def test_reverb_node_arguments_are_checked(kwargs, error, message):
  with pytest.raises(error, match=message):
    lp.ReverbNode(**kwargs)


def test_reverb_node_checkpoint_ctor_must_give_a_directory_with_replay_tables():
  program = lp.Program("bad_checkpoints")
  program.add_node(lp.ReverbNode(replay_tables, checkpoint_ctor=no_tables), label="replay")
  controller = lp.launch(program, "test_mt")
  with pytest.raises(errors.NodeFailedError, match=r"replay\[0\].*checkpoint directory"):
    controller.wait(TIMEOUT)


# DeepMind Reverb's tables.


def reverb_tables():
  import reverb

  return [
    reverb.Table.queue("experience", 100),
    reverb.Table(
      "prioritized",
      sampler=reverb.selectors.Prioritized(1.0),
      remover=reverb.selectors.Fifo(),
      max_size=100,
      rate_limiter=reverb.rate_limiters.MinSize(1),
    ),
  ]


def reverb_checkpointer(path: str):
  import reverb

  return reverb.checkpointers.DefaultCheckpointer(path)


def reverb_actor(client) -> None:
  for i in range(NUM_ITEMS):
    client.insert([np.int64(i)], {"experience": 1.0, "prioritized": float(i + 1)})


def reverb_program(checkpoints: str):
  program = lp.Program("reverb")
  node = lp.ReverbNode(
    reverb_tables, checkpoint_ctor=functools.partial(reverb_checkpointer, checkpoints)
  )
  handle = program.add_node(node, label="replay")
  program.add_node(lp.PyNode(reverb_actor, handle), label="actor")
  return program, handle


@needs_reverb
@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_reverb_node_over_reverb_tables_serves_a_real_reverb_server(launch_type, tmp_path):
  import reverb

  checkpoints = tmp_path / "reverb_checkpoints"
  program, handle = reverb_program(str(checkpoints))
  controller = launch(program, launch_type)
  try:
    client = handle.dereference()
    assert isinstance(client, reverb.Client)
    steps = []
    for _ in range(NUM_ITEMS):  # a queue: each sample waits for its item
      [sample] = client.sample("experience", num_samples=1)
      steps.append(int(sample[0].data[0]))
    assert steps == list(range(NUM_ITEMS))
    # Reverb applies an item's inserts into its tables one after the other.
    deadline = time.monotonic() + TIMEOUT
    while client.server_info()["prioritized"].current_size < NUM_ITEMS:
      assert time.monotonic() < deadline, "the items never all reached the prioritized table"
      threading.Event().wait(0.05)
    assert client.server_info()["prioritized"].current_size == NUM_ITEMS
    path = client.checkpoint()
    assert path.startswith(str(checkpoints)) and os.path.isdir(path)
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []

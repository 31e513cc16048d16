"""lp.ReverbNode, Launchpad's replay node: over this library's replay tables,
and over DeepMind Reverb's when dm-reverb is installed (the `[reverb]` extra;
those tests skip without it).

Node functions are module-level so that node processes import them by
reference.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import threading
import time

import numpy as np
import pytest

import launchpad as lp
from launchpad import errors, replay
from launchpad.replay import Table
from tests.replay import episode_calls

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


def listing(path) -> set[str]:
  """The names in directory `path` (none before it is made)."""
  return set(os.listdir(path)) if os.path.isdir(path) else set()


def checkpoints_written(path, before: set[str], count: int, complete) -> list[str]:
  """Waits until `count` checkpoints not among `before` (names in `path`) were seen complete."""
  found: list[str] = []
  deadline = time.monotonic() + TIMEOUT
  while len(found) < count:
    assert time.monotonic() < deadline, f"only {found} written in {TIMEOUT}s"
    names = sorted(listing(path) - before - set(found))
    found += [name for name in names if complete(path, name)]
    threading.Event().wait(0.05)
  return found


def replay_checkpoint_complete(path, name) -> bool:
  return name.endswith(".ckpt")  # written under a temporary name, then renamed


def wait_for_size(client, sizes: dict[str, int]) -> None:
  deadline = time.monotonic() + TIMEOUT
  while {t: client.server_info()[t].current_size for t in sizes} != sizes:
    assert time.monotonic() < deadline, f"the tables never reached {sizes}"
    threading.Event().wait(0.05)


# A small fraction of a minute: 0.3 s between checkpoints.
EVERY_MINUTES = 0.005


@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_checkpoint_time_delta_minutes_writes_checkpoints_a_restart_restores(launch_type, tmp_path):
  checkpoints = str(tmp_path / "checkpoints")
  ctor = functools.partial(directory, checkpoints)
  program = lp.Program("periodic")
  node = lp.ReverbNode(
    replay_tables, checkpoint_ctor=ctor, checkpoint_time_delta_minutes=EVERY_MINUTES
  )
  handle = program.add_node(node, label="replay")
  program.add_node(lp.PyNode(replay_actor, handle), label="actor")
  controller = launch(program, launch_type)
  try:
    wait_for_size(handle.dereference(), {"experience": NUM_ITEMS, "done": 1})
    # The second checkpoint begun after this began after every item was in.
    before = listing(checkpoints)
    checkpoints_written(checkpoints, before, 2, replay_checkpoint_complete)
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []

  program = lp.Program("restarted")
  handle = program.add_node(lp.ReverbNode(replay_tables, checkpoint_ctor=ctor), label="replay")
  controller = launch(program, launch_type)
  try:
    client = handle.dereference()
    assert client.server_info()["experience"].current_size == NUM_ITEMS
    steps = [int(client.sample("experience", timeout=TIMEOUT)[0].data["step"]) for _ in range(5)]
    assert steps == list(range(NUM_ITEMS))
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


@needs_reverb
def test_reverb_node_with_checkpoint_time_delta_minutes_checkpoints_reverb_tables(tmp_path):
  checkpoints = str(tmp_path / "reverb_checkpoints")
  ctor = functools.partial(reverb_checkpointer, checkpoints)
  program = lp.Program("reverb_periodic")
  node = lp.ReverbNode(
    reverb_tables, checkpoint_ctor=ctor, checkpoint_time_delta_minutes=EVERY_MINUTES
  )
  handle = program.add_node(node, label="replay")
  program.add_node(lp.PyNode(reverb_actor, handle), label="actor")
  controller = launch(program, "test_mt")
  try:
    wait_for_size(handle.dereference(), {"experience": NUM_ITEMS, "prioritized": NUM_ITEMS})
    # Reverb keeps only its latest checkpoint, a directory it marks DONE when written.
    before = listing(checkpoints)
    checkpoints_written(
      checkpoints, before, 2, lambda path, name: os.path.isfile(os.path.join(path, name, "DONE"))
    )
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []

  program = lp.Program("reverb_restarted")
  handle = program.add_node(lp.ReverbNode(reverb_tables, checkpoint_ctor=ctor), label="replay")
  controller = launch(program, "test_mt")
  try:
    info = handle.dereference().server_info()
    assert (info["experience"].current_size, info["prioritized"].current_size) == (5, 5)
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


# What Acme does with a ReverbNode: its adders write through the client's
# trajectory writer, its learner reads a TrajectoryDataset made from the
# table's signature, and a node calls lp.stop() when done.

EPISODES = 2
EPISODE_STEPS = 5
WINDOW = 3  # steps per item; items overlap


def acme_tables():
  import reverb
  import tensorflow as tf

  signature = {
    "observation": tf.TensorSpec([WINDOW, 2], tf.float32),
    "reward": tf.TensorSpec([], tf.float32),
  }
  return [reverb.Table.queue("trajectories", 100, signature=signature)]


def acme_actor(client) -> None:
  """An Acme adder: an item per window of WINDOW steps, end_episode after each episode."""
  with client.trajectory_writer(num_keep_alive_refs=WINDOW) as writer:
    for episode in range(EPISODES):
      for t in range(EPISODE_STEPS):
        step = 10 * episode + t
        writer.append({"observation": np.full(2, step, np.float32), "reward": np.float32(step)})
        if t >= WINDOW - 1:
          trajectory = {
            "observation": writer.history["observation"][-WINDOW:],
            "reward": writer.history["reward"][-1],
          }
          writer.create_item("trajectories", 1.0, trajectory)
      writer.end_episode()


def acme_learner(client, out_path: str) -> None:
  """An Acme learner's dataset: reads every item, writes what it read, stops the program."""
  import reverb

  dataset = reverb.TrajectoryDataset.from_table_signature(
    server_address=client.server_address,
    table="trajectories",
    max_in_flight_samples_per_worker=1,
    num_workers_per_iterator=1,
    rate_limiter_timeout_ms=int(TIMEOUT * 1000),  # an item missing fails, not hangs
  )
  read = []
  for sample in dataset.take(EPISODES * (EPISODE_STEPS - WINDOW + 1)):
    read.append(
      {
        "observation": sample.data["observation"].numpy().tolist(),
        "reward": float(sample.data["reward"].numpy()),
      }
    )
  with open(out_path, "w") as f:
    json.dump(read, f)
  lp.stop()


@needs_reverb
@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_acmes_trajectory_writer_and_trajectory_dataset_on_a_reverb_node(launch_type, tmp_path):
  out_path = str(tmp_path / "read.json")
  program = lp.Program("acme")
  replay_handle = program.add_node(lp.ReverbNode(acme_tables), label="replay")
  program.add_node(lp.PyNode(acme_actor, replay_handle), label="actor")
  program.add_node(lp.PyNode(acme_learner, replay_handle, out_path), label="learner")
  controller = launch(program, launch_type)
  try:
    assert controller.wait(TIMEOUT) is True
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  with open(out_path) as f:
    read = json.load(f)
  expected = [
    {
      "observation": [[float(10 * e + s)] * 2 for s in range(t - WINDOW + 1, t + 1)],
      "reward": float(10 * e + t),
    }
    for e in range(EPISODES)
    for t in range(WINDOW - 1, EPISODE_STEPS)
  ]
  assert sorted(read, key=lambda item: item["reward"]) == expected


@needs_reverb
def test_table_info_has_the_fields_of_reverbs():
  from reverb import reverb_types
  from reverb.cc import schema_pb2

  def names(message) -> list[str]:
    return [field.name for field in message.DESCRIPTOR.fields]

  info = Table.queue("q", 10).info()
  reverb_fields = [field.name for field in dataclasses.fields(reverb_types.TableInfo)]
  assert [f for f in reverb_fields if not hasattr(info, f)] == []
  read = {
    "rate_limiter_info": (info.rate_limiter_info, schema_pb2.RateLimiterInfo),
    "insert_stats": (info.rate_limiter_info.insert_stats, schema_pb2.RateLimiterCallStats),
    "sampler_options": (info.sampler_options, schema_pb2.KeyDistributionOptions),
    "prioritized": (
      info.sampler_options.prioritized,
      schema_pb2.KeyDistributionOptions.Prioritized,
    ),
    "heap": (info.sampler_options.heap, schema_pb2.KeyDistributionOptions.Heap),
    "table_worker_time": (info.table_worker_time, schema_pb2.TableWorkerTime),
  }
  missing = [
    f"{where}.{name}"
    for where, (ours, proto) in read.items()
    for name in names(proto)
    if not hasattr(ours, name)
  ]
  assert missing == []


@needs_reverb
def test_reverb_counts_episodes_as_the_figures_replay_tables_are_checked_against():
  import reverb

  tables = [
    reverb.Table(
      name, reverb.selectors.Fifo(), reverb.selectors.Fifo(), size, reverb.rate_limiters.MinSize(1)
    )
    for name, size in (("t", 3), ("u", 100))
  ]
  server = reverb.Server(tables)
  try:
    client = reverb.Client(f"localhost:{server.port}")
    assert episode_calls.run(client) == episode_calls.REVERB_COUNTS
  finally:
    server.stop()

"""Checkpoints: a server's tables written to a file and restored, in process and across a crash."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

import launchpad as lp
from launchpad import replay
from launchpad.replay import Table
from launchpad.replay import checkpoint as ckpt
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

TIMEOUT = 30.0  # bound on every wait (processes take a moment to start)


def make_tables() -> list[Table]:
  return [
    Table.queue("queue", 100),
    Table("prio", sel.Prioritized(1.0, seed=3), sel.Fifo(), 100, rl.MinSize(1)),
  ]


def step(i: int) -> dict:
  return {"obs": np.full(64, i, dtype=np.float32), "step": np.int64(i)}


@pytest.fixture
def servers():
  started = []

  def _start(tables, **kwargs):
    server = replay.Server(tables, **kwargs)
    started.append(server)
    return server, server.localhost_client(timeout=TIMEOUT)

  yield _start
  for server in started:
    server.stop()


def items_of(server: replay.Server, name: str) -> list[tuple]:
  """(key, priority, times_sampled, step) of a table's items, in insertion order."""
  snapshot = server.tables[name].snapshot()
  store = server.chunk_store
  return [
    (
      item["key"],
      item["priority"],
      item["times_sampled"],
      int(store.resolve(item["data"])["step"]),
    )
    for item in snapshot["items"]
  ]


def fill(client: replay.Client) -> None:
  """Five steps into both tables (one chunk per column, shared), then samples and updates."""
  keys = client.insert_batch([step(i) for i in range(5)], {"queue": 1.0, "prio": 1.0})
  client.mutate_priorities("prio", updates={keys[1]: 5.0, keys[3]: 0.5})
  client.sample_batch("prio", 4)
  [first] = client.sample("queue")  # FIFO: step 0, removed from the queue
  assert int(first.data["step"]) == 0


def test_round_trip_restores_items_priorities_times_sampled_and_order(servers, tmp_path):
  directory = str(tmp_path / "ckpt")
  server, client = servers(make_tables(), checkpoint_dir=directory)
  assert server.restored_from is None
  fill(client)
  path = client.checkpoint()
  assert os.path.dirname(path) == directory and path.endswith(".ckpt")
  assert ckpt.list_checkpoints(directory) == [path]
  before = {name: items_of(server, name) for name in ("queue", "prio")}
  info_before = client.server_info()
  # Data shared by both tables is in the file once: two chunks (obs, step).
  with open(path, "rb") as f:
    data = ckpt.decode(f.read())
  assert len(data["chunks"]) == 2
  assert all("chunks" not in s for s in data["tables"])
  server.stop()

  restored, client2 = servers(make_tables(), checkpoint_dir=directory)
  assert restored.restored_from == path
  after = {name: items_of(restored, name) for name in ("queue", "prio")}
  assert after == before
  assert [s for *_, s in after["queue"]] == [1, 2, 3, 4]
  assert client2.chunk_store_info()["num_chunks"] == 2  # stored once, shared again
  info_after = client2.server_info()
  for name in ("queue", "prio"):
    assert info_after[name]["rate_limiter"] == {
      **info_before[name]["rate_limiter"],
      "insert_stats": info_after[name]["rate_limiter"]["insert_stats"],
      "sample_stats": info_after[name]["rate_limiter"]["sample_stats"],
    }
    assert info_after[name]["num_inserts"] == info_before[name]["num_inserts"]
  # The FIFO order continues where it was.
  assert [int(client2.sample("queue")[0].data["step"]) for _ in range(4)] == [1, 2, 3, 4]


def test_without_a_checkpoint_dir_checkpoint_is_refused(servers):
  _, client = servers(make_tables())
  with pytest.raises(ValueError, match="checkpoint_dir"):
    client.checkpoint()


def test_the_newest_complete_checkpoint_is_loaded_and_old_ones_pruned(servers, tmp_path):
  directory = str(tmp_path / "ckpt")
  server, client = servers(make_tables(), checkpoint_dir=directory)
  paths = []
  for i in range(5):
    client.insert(step(i), {"queue": 1.0})
    paths.append(client.checkpoint())
  assert paths == sorted(paths)
  assert ckpt.list_checkpoints(directory) == paths[::-1][: ckpt.KEEP]
  assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
  server.stop()
  restored, _ = servers(make_tables(), checkpoint_dir=directory)
  assert restored.restored_from == paths[-1]
  assert len(restored.tables["queue"]) == 5


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "empty"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(servers, tmp_path, caplog, damage):
  directory = str(tmp_path / "ckpt")
  server, client = servers(make_tables(), checkpoint_dir=directory)
  client.insert(step(0), {"queue": 1.0})
  older = client.checkpoint()
  client.insert(step(1), {"queue": 1.0})
  newest = client.checkpoint()
  server.stop()
  with open(newest, "rb") as f:
    blob = f.read()
  if damage == "truncate":
    blob = blob[: len(blob) - 10]
  elif damage == "corrupt":
    blob = blob[:-5] + bytes(b ^ 0xFF for b in blob[-5:])
  else:
    blob = b""
  with open(newest, "wb") as f:
    f.write(blob)
  with caplog.at_level(logging.WARNING, logger="launchpad.replay.checkpoint"):
    restored, _ = servers(make_tables(), checkpoint_dir=directory)
  assert restored.restored_from == older
  assert len(restored.tables["queue"]) == 1
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(newest in message for message in warnings), warnings


def test_node_arguments_are_checked():
  with pytest.raises(ValueError, match="needs a checkpoint_dir"):
    lp.ReplayNode(make_tables(), checkpoint_every=10)
  with pytest.raises(ValueError, match="checkpoint_every"):
    lp.ReplayNode(make_tables(), checkpoint_dir="/tmp/x", checkpoint_every=0)
  lp.ReplayNode(make_tables, checkpoint_dir="/tmp/x", checkpoint_every=1.5)


def test_periodic_checkpoints_and_one_at_stop_in_threads(lp_launch, tmp_path):
  directory = str(tmp_path / "ckpt")
  program = lp.Program("replay_ckpt_mt")
  handle = program.add_node(
    lp.ReplayNode(make_tables(), checkpoint_dir=directory, checkpoint_every=0.05)
  )
  controller = lp_launch(program)
  client = handle.dereference()
  client.insert(step(0), {"queue": 1.0}, timeout=TIMEOUT)
  deadline = time.monotonic() + TIMEOUT
  while not ckpt.list_checkpoints(directory):  # polls: the thread has no event to wait on
    assert time.monotonic() < deadline, "no periodic checkpoint written"
    threading.Event().wait(0.01)
  client.insert(step(1), {"queue": 1.0}, timeout=TIMEOUT)
  controller.stop()
  assert controller.wait(TIMEOUT)
  # The last checkpoint, written at stop, holds both items.
  _, data = ckpt.load_latest(directory)
  [queue] = [s for s in data["tables"] if s["name"] == "queue"]
  assert len(queue["items"]) == 2


def test_a_killed_node_restarts_with_its_checkpointed_items(tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "lphome"))
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  directory = str(tmp_path / "ckpt")
  program = lp.Program("replay_ckpt_mp")
  handle = program.add_node(
    lp.ReplayNode(make_tables(), checkpoint_dir=directory),
    restart="on-failure",
    restart_backoff=0.0,
  )
  controller = lp.launch(
    program, launch_type="local_mp", terminal="output_to_files", grace_period=2.0
  )
  try:
    client = handle.dereference()
    keys = client.insert_batch([step(i) for i in range(3)], {"queue": 1.0, "prio": 2.0})
    client.mutate_priorities("prio", updates={keys[0]: 7.0})
    path = client.checkpoint(timeout=TIMEOUT)
    client.insert(step(99), {"queue": 1.0}, timeout=TIMEOUT)  # after the checkpoint: lost
    [name] = [n for n in controller._workers.pids() if n.startswith("replay")]
    old_pid = controller._workers.pids()[name]
    os.kill(old_pid, signal.SIGKILL)

    deadline = time.monotonic() + TIMEOUT
    info = None
    while True:  # polls: a restart has no event the test can wait on
      assert time.monotonic() < deadline, "the replay node did not come back"
      pid = controller._workers.pids().get(name)
      if pid is not None and pid != old_pid:
        try:
          info = handle.dereference().server_info(timeout=2.0)
          break
        except Exception:  # noqa: BLE001 - the new process may not serve yet
          pass
      threading.Event().wait(0.02)
    assert info["queue"]["size"] == 3
    assert info["prio"]["size"] == 3
    client = handle.dereference()
    assert client.chunk_store_info()["num_chunks"] == 2
    steps = [int(client.sample("queue", timeout=TIMEOUT)[0].data["step"]) for _ in range(3)]
    assert steps == [0, 1, 2]
    batch = client.sample_batch("prio", 20, timeout=TIMEOUT)
    priorities = dict(zip(batch.info.key.tolist(), batch.info.priority.tolist(), strict=True))
    assert priorities.get(keys[0], 7.0) == 7.0
    assert all(p == 2.0 for k, p in priorities.items() if k != keys[0])
    assert ckpt.list_checkpoints(directory)[0] == path
  finally:
    controller.stop(timeout=TIMEOUT)
    for sig, handler in handlers.items():
      signal.signal(sig, handler)

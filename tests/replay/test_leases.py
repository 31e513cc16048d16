"""Trajectory writer leases: a dead writer's chunks are freed; a live one's survive or come back."""

from __future__ import annotations

import re
import sys
import threading
import time

import numpy as np
import pytest
from child_process import Child

import launchpad as lp
from launchpad import replay
from launchpad.replay import Table

TIMEOUT = 10.0  # bound on every wait
LEASE = 0.3  # seconds: short, so that the tests are quick

# A writer in another process: it appends and flushes a step every 50 ms (so
# renewing its lease), printing how many, until it is killed.
WRITER = """
import sys, time
import numpy as np
from launchpad import replay
client = replay.Client(sys.argv[1], secret=bytes.fromhex(sys.argv[2]), timeout=10)
writer = client.trajectory_writer(num_keep_alive_refs=3)
for t in range(1, 100000):
  writer.append({"obs": np.full(16, t, np.float32)})
  writer.flush()
  print("flushed", t, flush=True)
  time.sleep(0.05)
"""


@pytest.fixture
def server():
  with replay.Server([Table.queue("q", 10)], writer_lease_seconds=LEASE) as served:
    yield served


def wait_until(predicate, what: str) -> None:
  """Polls an observable state of the server until it holds, up to TIMEOUT."""
  deadline = time.monotonic() + TIMEOUT
  while not predicate():
    if time.monotonic() > deadline:
      pytest.fail(f"{what} did not happen within {TIMEOUT} s")
    threading.Event().wait(0.01)


def test_the_chunks_of_a_writer_killed_with_sigkill_are_freed_after_its_lease(server):
  child = Child([sys.executable, "-c", WRITER, server.address, server.secret.hex()], timeout=60)
  try:
    # 20 flushes take ~1 s, over three leases: a writer that calls keeps its chunks.
    child.wait_for(re.compile(r"flushed 20$"))
    held = server.chunk_store.info()
    assert held["num_chunks"] >= 1 and held["num_references"] == held["num_chunks"]
    assert len(server._service._writers) == 1
    child.kill()  # SIGKILL: the writer cannot say goodbye
    assert child.process.returncode == -9
  finally:
    child.kill()
  wait_until(
    lambda: server.chunk_store.info()["num_chunks"] == 0, "freeing the dead writer's chunks"
  )
  assert server.chunk_store.info() == {"num_chunks": 0, "nbytes": 0, "num_references": 0}
  assert server._service._writers == {}


def test_a_writer_idle_past_its_lease_sends_its_lost_chunks_again(server):
  client = server.localhost_client(timeout=TIMEOUT)
  with client.trajectory_writer(num_keep_alive_refs=3) as writer:
    for t in range(3):
      writer.append({"obs": np.full(4, t, np.float32)})
    writer.flush()  # the steps are on the server, held by the writer alone
    assert client.chunk_store_info()["num_chunks"] == 1
    wait_until(lambda: client.chunk_store_info()["num_chunks"] == 0, "the lease expiring")
    # The writer still refers to those steps: its next flush sends them again.
    writer.create_item("q", 1.0, {"obs": writer.history["obs"][-3:]})
  [sample] = client.sample("q")
  np.testing.assert_array_equal(sample.data["obs"][:, 0], [0, 1, 2])
  assert client.chunk_store_info()["num_chunks"] == 0  # the item went, and the writer closed


def test_chunks_still_stored_for_items_are_held_again_without_a_resend(server):
  client = server.localhost_client(timeout=TIMEOUT)
  sent = []
  send = client.insert_trajectories

  def record(writer_id, chunks, *args):
    sent.append([key for key, _ in chunks])
    return send(writer_id, chunks, *args)

  client.insert_trajectories = record
  with client.trajectory_writer(num_keep_alive_refs=2) as writer:
    writer.append({"obs": np.zeros(4, np.float32)})
    writer.append({"obs": np.ones(4, np.float32)})
    writer.create_item("q", 1.0, {"obs": writer.history["obs"][-1]})
    writer.flush()  # one chunk: the writer and the item each hold it
    assert client.chunk_store_info()["num_references"] == 2
    wait_until(lambda: client.chunk_store_info()["num_references"] == 1, "the lease expiring")
    writer.create_item("q", 1.0, {"obs": writer.history["obs"][-2:]})
    writer.flush()
    assert sent[-1] == []  # nothing sent again: the server took the stored chunk back
    assert client.chunk_store_info() == {"num_chunks": 1, "nbytes": 32, "num_references": 3}
  first, second = client.sample("q", 2)
  np.testing.assert_array_equal(first.data["obs"], np.ones(4))
  np.testing.assert_array_equal(second.data["obs"], [np.zeros(4), np.ones(4)])


def test_a_flush_blocked_longer_than_the_lease_keeps_its_chunks(server):
  client = server.localhost_client(timeout=TIMEOUT)
  client.insert_batch([{"x": np.int8(i)} for i in range(10)], {"q": 1.0})  # the queue is full
  writer = client.trajectory_writer(num_keep_alive_refs=2)
  writer.append({"obs": np.full(4, 7, np.float32)})
  writer.create_item("q", 1.0, {"obs": writer.history["obs"][-1]})
  outcome = {}

  def flush():
    try:
      writer.flush(timeout=TIMEOUT)
      outcome["ok"] = True
    except Exception as e:  # noqa: BLE001 - the test inspects it
      outcome["error"] = e

  flusher = threading.Thread(target=flush)
  flusher.start()
  stats = server.tables["q"].info
  wait_until(lambda: stats()["rate_limiter"]["insert_stats"]["pending"] == 1, "the flush blocking")
  threading.Event().wait(3 * LEASE)  # what is tested: the lease would have expired by now
  info = client.chunk_store_info()  # the ten items' batch chunk, and the writer's chunk
  assert (info["num_chunks"], info["num_references"]) == (2, 11)
  client.sample("q")  # makes room: the flush goes on with the chunk it sent
  flusher.join(TIMEOUT)
  assert outcome == {"ok": True}
  samples = client.sample("q", 10)
  np.testing.assert_array_equal(samples[-1].data["obs"], np.full(4, 7))
  writer.close()
  assert client.chunk_store_info()["num_chunks"] == 0


@pytest.mark.parametrize("lease", [0, -1.0, float("nan"), float("inf"), "60", True])
def test_bad_lease_durations_are_refused(lease):
  with pytest.raises(ValueError, match="writer_lease_seconds must be a number of seconds > 0"):
    replay.Server([Table.queue("q", 1)], writer_lease_seconds=lease)
  with pytest.raises(ValueError, match="writer_lease_seconds"):
    lp.ReplayNode([Table.queue("q", 1)], writer_lease_seconds=lease)


def test_a_replay_node_holds_writers_chunks_under_its_lease(lp_launch):
  program = lp.Program("leases")
  handle = program.add_node(lp.ReplayNode([Table.queue("q", 10)], writer_lease_seconds=LEASE))
  lp_launch(program)
  client = handle.dereference().with_timeout(TIMEOUT)
  writer = client.trajectory_writer(num_keep_alive_refs=2)
  writer.append({"obs": np.zeros(4, np.float32)})
  writer.flush()  # sent and held, then the writer goes quiet, as a dead one would
  assert client.chunk_store_info()["num_chunks"] == 1
  wait_until(lambda: client.chunk_store_info()["num_chunks"] == 0, "the node's lease expiring")

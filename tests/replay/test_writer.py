"""TrajectoryWriter over real sockets: shared storage, history, flushes, releases, processes."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from launchpad import replay
from launchpad.replay import RateLimiterTimeoutError, Table, TableClosedError
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay.writer import TrajectoryColumn, TrajectoryWriter

TIMEOUT = 10.0  # bound on every wait
OBS = 64  # float32 values per observation


@pytest.fixture
def servers():
  """Starts replay servers; every one is stopped at teardown."""
  started = []

  def _start(tables):
    server = replay.Server(tables)
    started.append(server)
    return server, replay.Client(server.address, secret=server.secret, timeout=TIMEOUT)

  yield _start
  for server in started:
    server.stop()


def uniform(name="u", max_size=1000) -> Table:
  return Table(name, sel.Uniform(seed=1), sel.Fifo(), max_size, rl.MinSize(1))


def step(t: int) -> dict:
  return {"obs": np.full(OBS, t, np.float32), "reward": np.float32(t), "info": {"t": np.int64(t)}}


STEP_NBYTES = OBS * 4 + 4 + 8


def write_n_step(writer: TrajectoryWriter, num_steps: int, n: int, table: str = "q") -> None:
  """Appends a stream of steps, with an item per n-step window (windows overlap)."""
  for t in range(num_steps):
    writer.append(step(t))
    if t >= n - 1:
      writer.create_item(
        table,
        1.0,
        {
          "obs": writer.history["obs"][-n:],
          "reward": writer.history["reward"][-n:],
          "t": writer.history["info/t"][-1],
        },
      )


def drain(client, table: str, count: int) -> list:
  samples = client.sample(table, count)
  assert len(samples) == count
  return samples


# Storage and data.


@pytest.mark.parametrize("max_chunk_length", [7, 256])
def test_overlapping_windows_store_each_step_once(servers, max_chunk_length):
  server, client = servers([Table.queue("q", 1000)])
  num_steps, n = 100, 5
  with client.trajectory_writer(n, max_chunk_length=max_chunk_length) as writer:
    write_n_step(writer, num_steps, n)
    writer.flush()
    assert client.server_info()["q"]["size"] == num_steps - n + 1
    stored = client.chunk_store_info()["nbytes"]
  assert stored == num_steps * STEP_NBYTES  # not windows x window size (~5x more)
  assert client.chunk_store_info()["nbytes"] == stored  # the items keep every step
  assert server.chunk_store.nbytes == stored


@pytest.mark.parametrize("max_chunk_length", [3, 256])
def test_sampled_items_hold_their_steps_in_order(servers, max_chunk_length):
  _, client = servers([Table.queue("q", 1000)])
  with client.trajectory_writer(4, max_chunk_length=max_chunk_length) as writer:
    write_n_step(writer, 30, 4)
  samples = drain(client, "q", 27)
  for i, sample in enumerate(samples):  # a queue gives the items back in insertion order
    last = i + 3
    assert sample.data["obs"].shape == (4, OBS) and sample.data["obs"].dtype == np.float32
    np.testing.assert_array_equal(sample.data["obs"][:, 0], np.arange(last - 3, last + 1))
    np.testing.assert_array_equal(sample.data["reward"], np.arange(last - 3, last + 1))
    assert sample.data["t"].shape == () and sample.data["t"] == last
  assert set(samples[0].data) == {"obs", "reward", "t"}
  assert client.chunk_store_info()["num_chunks"] == 0  # the queue emptied: nothing left


def test_nested_steps_flatten_to_paths_and_items_come_back_nested(servers):
  _, client = servers([Table.queue("q", 10)])
  with client.trajectory_writer(2) as writer:
    writer.append({"a": {"x": 1.0, "y": [np.int32(2), np.int32(3)]}})
    writer.append({"a": {"x": 4.0, "y": [np.int32(5), np.int32(6)]}})
    assert sorted(writer.history) == ["a/x", "a/y/0", "a/y/1"]
    ref = writer.history["a/x"][0:2]
    assert isinstance(ref, TrajectoryColumn) and ref.shape == (2,) and ref.dtype == np.float64
    writer.create_item("q", 1.0, {"pair": [ref, writer.history["a/y/1"][-1]]})
  [sample] = client.sample("q")
  first, second = sample.data["pair"]
  np.testing.assert_array_equal(first, [1.0, 4.0])
  assert second == 6 and isinstance(sample.data["pair"], list)


def test_append_copies_so_a_reused_buffer_does_not_change_the_steps(servers):
  _, client = servers([Table.queue("q", 10)])
  obs = np.zeros(3, np.int32)
  with client.trajectory_writer(3) as writer:
    for t in range(3):
      obs[:] = t  # an environment refilling one array
      writer.append({"obs": obs})
    writer.create_item("q", 1.0, {"obs": writer.history["obs"][:]})
  [sample] = client.sample("q")
  np.testing.assert_array_equal(sample.data["obs"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])


# History.


def test_history_indexing_and_its_errors(servers):
  _, client = servers([Table.queue("q", 10)])
  with client.trajectory_writer(3) as writer:
    with pytest.raises(KeyError, match="no column 'obs'"):
      writer.history["obs"]
    for t in range(5):
      writer.append(step(t))
    history = writer.history["obs"]
    assert len(history) == 3
    assert history[-1].steps == range(4, 5) and history[0].steps == range(2, 3)
    assert history[-3:].steps == range(2, 5) and history[1:].steps == range(3, 5)
    assert history[-1].squeeze and not history[-1:].squeeze
    with pytest.raises(IndexError, match="num_keep_alive_refs=3"):
      history[-4]
    with pytest.raises(IndexError, match="num_keep_alive_refs=3"):
      history[3]
    with pytest.raises(IndexError, match="num_keep_alive_refs=3"):
      history[-4:]
    with pytest.raises(IndexError, match="selects no steps"):
      history[2:1]
    with pytest.raises(ValueError, match="no step"):
      history[::2]
    with pytest.raises(TypeError):
      history["0"]
    stale = history[0]
    writer.append(step(5))
    with pytest.raises(ValueError, match="num_keep_alive_refs=3"):
      writer.create_item("q", 1.0, {"obs": stale})
    with pytest.raises(ValueError, match="reference"):
      writer.create_item("q", 1.0, {"obs": np.zeros(3)})
    with client.trajectory_writer(3) as other:
      other.append(step(0))
      with pytest.raises(ValueError, match="this writer's history"):
        writer.create_item("q", 1.0, {"obs": other.history["obs"][-1]})
    with pytest.raises(ValueError, match="empty mapping"):
      writer.create_item("q", 1.0, {})
    with pytest.raises(ValueError, match="priority"):
      writer.create_item("q", -1.0, {"obs": history[-1]})
    with pytest.raises(ValueError, match="expected dtype float32"):
      writer.append({"obs": np.zeros(OBS, np.float64)})
    writer.append({"reward": np.float32(6)})  # a step may leave a column out
    with pytest.raises(ValueError, match="no data at step 6"):
      history[-1]
    assert writer.num_queued_items == 0
    writer.create_item("q", 1.0, {"obs": history[-2]})
  [sample] = client.sample("q")
  assert sample.data["obs"][0] == 5


def test_end_episode_flushes_and_clears_the_history(servers):
  server, client = servers([Table.queue("q", 100)])
  with client.trajectory_writer(2) as writer:
    write_n_step(writer, 6, 2)
    ref = writer.history["obs"][-1]
    writer.end_episode()
    assert client.server_info()["q"]["size"] == 5
    assert len(writer.history["obs"]) == 0
    with pytest.raises(IndexError, match="num_keep_alive_refs=2"):
      writer.history["obs"][-1]
    with pytest.raises(ValueError, match="end_episode"):
      writer.create_item("q", 1.0, {"obs": ref})
    # The writer released everything: only the items keep chunks.
    client.reset("q")
    assert client.chunk_store_info()["num_chunks"] == 0
    write_n_step(writer, 3, 2)
    writer.end_episode(clear_buffers=False)
    assert len(writer.history["obs"]) == 2  # kept for items spanning episodes
  samples = drain(client, "q", 2)
  assert [int(s.data["t"]) for s in samples] == [1, 2]
  client.reset("q")
  assert server.chunk_store.info() == {"num_chunks": 0, "nbytes": 0, "num_references": 0}


def test_context_exit_flushes_and_an_exception_drops_the_queue(servers):
  _, client = servers([Table.queue("q", 100)])
  with client.trajectory_writer(3) as writer:
    write_n_step(writer, 5, 3)
    assert client.server_info()["q"]["size"] == 0  # queued, not yet sent
  assert client.server_info()["q"]["size"] == 3
  with pytest.raises(RuntimeError, match="boom"):
    with client.trajectory_writer(3) as writer:
      write_n_step(writer, 5, 3)
      raise RuntimeError("boom")
  assert client.server_info()["q"]["size"] == 3
  with pytest.raises(RuntimeError, match="closed"):
    writer.append(step(0))
  client.reset("q")
  assert client.chunk_store_info()["num_chunks"] == 0


# Releases.


def test_no_chunk_leaks_with_evictions_and_automatic_sends(servers):
  server, client = servers([uniform("u", max_size=20), Table.queue("q", 1000)])
  with client.trajectory_writer(5, max_chunk_length=4) as writer:
    for t in range(300):
      writer.append(step(t))
      if len(writer.history["obs"]) == 5:
        writer.create_item("u", 1.0, {"obs": writer.history["obs"][-5:]})
      if t % 50 == 49:
        writer.end_episode(clear_buffers=t % 100 == 49)
      # Chunks are freed as the window moves on: bounded by the table and the window.
      assert client.chunk_store_info()["num_chunks"] <= 3 * (20 + 5)
    writer.create_item("q", 2.0, {"reward": writer.history["reward"][-2:]})
  assert client.server_info()["u"]["size"] == 20
  client.reset("u")
  [sample] = client.sample("q")
  np.testing.assert_array_equal(sample.data["reward"], [298, 299])
  assert server.chunk_store.info() == {"num_chunks": 0, "nbytes": 0, "num_references": 0}
  assert server._service._writers == {}


def test_the_writer_keeps_only_the_chunks_of_its_window(servers):
  _, client = servers([Table.queue("q", 10)])
  with client.trajectory_writer(2, max_chunk_length=3) as writer:
    for t in range(20):
      writer.append(step(t))
      if t >= 1:
        writer.create_item("q", 1.0, {"obs": writer.history["obs"][-2:]})
      writer.flush()
      if t >= 1:
        [sample] = client.sample("q")
        np.testing.assert_array_equal(sample.data["obs"][:, 0], [t - 1, t])
      # Items are consumed: what is left is the window's 2 steps, in at most 2 chunks
      # per column (3 columns).
      info = client.chunk_store_info()
      assert info["num_chunks"] <= 2 * 3 and info["num_references"] == info["num_chunks"]
  assert client.chunk_store_info()["num_chunks"] == 0


def test_unreferenced_steps_are_never_sent(servers):
  _, client = servers([Table.queue("q", 100)])
  with client.trajectory_writer(1) as writer:
    for t in range(10):
      writer.append(step(t))
    writer.end_episode()  # no item used the steps and none can now
    assert client.chunk_store_info()["num_chunks"] == 0


# Errors.


def test_flush_timeout_on_a_full_queue_keeps_the_writer_usable(servers):
  _, client = servers([Table.queue("q", 2)])
  with client.trajectory_writer(1) as writer:
    for t in range(3):
      writer.append(step(t))
      writer.create_item("q", 1.0, {"t": writer.history["info/t"][-1]})
    start = time.monotonic()
    with pytest.raises(RateLimiterTimeoutError) as raised:
      writer.flush(timeout=0.2)
    assert time.monotonic() - start < TIMEOUT / 2
    assert raised.value.table == "q"
    assert writer.num_queued_items == 1
    assert [int(s.data["t"]) for s in drain(client, "q", 2)] == [0, 1]
    writer.append(step(3))
    writer.create_item("q", 1.0, {"t": writer.history["info/t"][-1]})
    writer.flush()
    assert writer.num_queued_items == 0
  assert [int(s.data["t"]) for s in drain(client, "q", 2)] == [2, 3]
  assert client.chunk_store_info()["num_chunks"] == 0


def test_a_rejected_item_is_dropped_and_the_others_stay(servers):
  tables = [
    Table.queue("q", 10),
    Table("typed", sel.Fifo(), sel.Fifo(), 10, rl.MinSize(1), signature={"x": (np.int64, ())}),
  ]
  server, client = servers(tables)
  with client.trajectory_writer(2) as writer:
    writer.append(step(0))
    for table in ("q", "nope", "q"):
      writer.create_item(table, 1.0, {"t": writer.history["info/t"][-1]})
    with pytest.raises(ValueError, match="no table named 'nope'"):
      writer.flush()
    assert client.server_info()["q"]["size"] == 1  # the item before it went in
    assert writer.num_queued_items == 1  # the item after it waits for the next flush
    writer.create_item("typed", 1.0, {"x": writer.history["reward"][-1]})
    with pytest.raises(ValueError, match="does not match the signature"):
      writer.flush()
    assert client.server_info()["q"]["size"] == 2
    assert writer.num_queued_items == 0
    writer.create_item("typed", 1.0, {"x": writer.history["info/t"][-1]})
  assert client.server_info()["typed"]["size"] == 1
  client.reset("q")
  client.reset("typed")
  assert server.chunk_store.info()["num_chunks"] == 0


def test_a_full_chunk_is_stored_while_the_writer_fills_the_next(servers):
  server, client = servers([Table.queue("q", 1)])
  with client.trajectory_writer(1, max_chunk_length=3) as writer:
    for t in range(3):  # the third step fills the chunk: its call goes out, with both items
      writer.append(step(t))
      if t < 2:
        writer.create_item("q", 1.0, {"t": writer.history["info/t"][-1]})
    # The queue holds one: the second item waits on the server, not in append.
    assert [int(s.data["t"]) for s in drain(client, "q", 1)] == [0]
    writer.append(step(3))
    writer.flush()  # waits for the call in flight: the second item went in once there was room
    assert writer.num_queued_items == 0
    assert [int(s.data["t"]) for s in drain(client, "q", 1)] == [1]
  assert server.chunk_store.info()["num_chunks"] == 0


def test_the_error_of_a_chunks_call_is_raised_by_the_next_send(servers):
  server, client = servers([Table.queue("q", 10)])
  with client.trajectory_writer(1, max_chunk_length=2) as writer:
    writer.append(step(0))
    writer.create_item("nope", 1.0, {"t": writer.history["info/t"][-1]})
    writer.create_item("q", 1.0, {"t": writer.history["info/t"][-1]})
    writer.append(step(1))  # fills the chunk; the call in flight will be refused
    with pytest.raises(ValueError, match="no table named 'nope'"):
      writer.flush()
    assert writer.num_queued_items == 1  # the item after the refused one waits
    writer.flush()
    assert [int(s.data["t"]) for s in drain(client, "q", 1)] == [0]
  assert server.chunk_store.info()["num_chunks"] == 0


def test_a_call_whose_reply_was_lost_is_resent_without_duplicates(servers, monkeypatch):
  server, client = servers([Table.queue("q", 100)])
  send = client.insert_trajectories
  lost = []

  def lose_one_reply(*args):
    reply = send(*args)  # the server did the work...
    if not lost:
      lost.append(reply)
      raise ConnectionError("reply lost")  # ...but the writer does not know it
    return reply

  monkeypatch.setattr(client, "insert_trajectories", lose_one_reply)
  with client.trajectory_writer(2, max_chunk_length=4) as writer:
    write_n_step(writer, 3, 2)
    with pytest.raises(ConnectionError):
      writer.flush()
    assert writer.num_queued_items == 2  # unknown outcome: everything is kept to resend
    write_n_step(writer, 6, 2)  # more steps after the failed call
  assert lost[0]["inserted"] == 2
  samples = drain(client, "q", 7)  # 2 + 5 items: the resent 2 only updated their priority
  assert [int(s.data["t"]) for s in samples] == [1, 2, 1, 2, 3, 4, 5]
  assert client.server_info()["q"]["num_inserts"] == 7
  assert server.chunk_store.info()["num_chunks"] == 0
  assert server._service._writers == {}


def test_stopping_the_server_fails_a_blocked_flush_with_table_closed(servers):
  server, client = servers([Table.queue("q", 1)])
  writer = client.trajectory_writer(1)
  for t in range(2):
    writer.append(step(t))
    writer.create_item("q", 1.0, {"t": writer.history["info/t"][-1]})
  outcome = {}

  def flush():
    try:
      writer.flush(timeout=TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the test inspects it
      outcome["error"] = e

  flusher = threading.Thread(target=flush)
  flusher.start()
  deadline = time.monotonic() + TIMEOUT
  while server.tables["q"].info()["rate_limiter"]["insert_stats"]["pending"] != 1:
    assert time.monotonic() < deadline, "the flush did not block"
    time.sleep(0.005)
  server.stop()
  flusher.join(TIMEOUT)
  assert not flusher.is_alive()
  assert isinstance(outcome["error"], TableClosedError), outcome
  assert writer.num_queued_items == 1  # not inserted, so still queued


# Processes.


def child_main(address: str, secret: bytes, results) -> None:
  """A writer in a child process (spawned: a fresh interpreter)."""
  try:
    client = replay.Client(address, secret=secret, timeout=TIMEOUT)
    with client.trajectory_writer(3, max_chunk_length=8) as writer:
      write_n_step(writer, 20, 3)
    results.put({"ok": True})
  except BaseException as e:  # noqa: BLE001 - reported to the test
    results.put({"failure": repr(e)})


def test_a_writer_in_a_child_process(servers):
  server, client = servers([Table.queue("q", 100)])
  ctx = multiprocessing.get_context("spawn")
  results = ctx.Queue()
  child = ctx.Process(target=child_main, args=(server.address, server.secret, results))
  child.start()
  try:
    report = results.get(timeout=60)
    child.join(TIMEOUT)
  finally:
    if child.is_alive():
      child.terminate()
      child.join(TIMEOUT)
  assert report == {"ok": True}
  assert child.exitcode == 0
  samples = drain(client, "q", 18)
  assert [int(s.data["t"]) for s in samples] == list(range(2, 20))
  np.testing.assert_array_equal(samples[-1].data["obs"][:, 0], [17, 18, 19])
  assert server.chunk_store.info()["num_chunks"] == 0

"""replay.Stream: batches sampled ahead from a server in another process.

The server runs in a spawned child process, as a learner's replay node
would; one of its tables counts the sample calls running on it at once, so
the bound on calls in flight is checked where the calls run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import namedtuple
from collections.abc import Iterator

import numpy as np
import pytest

import launchpad as lp
from launchpad import errors, replay
from launchpad.courier.client import Client as CourierClient
from launchpad.replay import ChunkStore, Table, TableClosedError
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay.client import ReplaySample
from tests.replay.server_child import ServerChild
from tests.replay.waits import pending_samples, wait_until

TIMEOUT = 30.0  # bound on every wait
Step = namedtuple("Step", ["obs", "extras"])


class CountingTable(Table):
  """A uniform table (MinSize(1)) that counts the sample calls running on it.

  `stats()`, which clients read through `table_stats()`, adds how many run
  now and the most that ever ran at once (since the last reset).
  """

  def __init__(self, name: str, chunk_store: ChunkStore):
    super().__init__(
      name, sel.Uniform(), sel.Fifo(), 10_000, rl.MinSize(1), chunk_store=chunk_store
    )
    self._count_lock = threading.Lock()
    self._running = 0
    self._most = 0

  @contextlib.contextmanager
  def sampling(self):
    with self._count_lock:
      self._running += 1
      self._most = max(self._most, self._running)
    try:
      with super().sampling() as sampling:
        yield sampling
    finally:
      with self._count_lock:
        self._running -= 1

  def stats(self) -> dict[str, int]:
    with self._count_lock:
      counts = {"running_samples": self._running, "most_running_samples": self._most}
    return {**super().stats(), **counts}

  def reset(self) -> None:
    super().reset()
    with self._count_lock:
      self._most = self._running


def new_server() -> replay.Server:
  store = ChunkStore()  # one store: the server serves these very objects
  tables = [
    Table.queue("queue", 10_000, chunk_store=store),
    CountingTable("counted", store),
    Table("min_size", sel.Uniform(), sel.Fifo(), 100, rl.MinSize(10), chunk_store=store),
  ]
  return replay.Server(tables)


def serve(conn) -> None:
  """Child-process entry point: on "new", replaces its server by a fresh one
  (new tables, new address) and sends its address; on "stop", or when the
  parent goes away, stops it and exits."""
  server = None
  try:
    while conn.recv() == "new":
      if server is not None:
        server.stop()
      server = new_server()
      conn.send((server.address, server.secret))
  except EOFError:
    pass
  if server is not None:
    server.stop()


class Child(ServerChild):
  """A replay server (serve) in a spawned child process.

  Each test gets a fresh server (`new_server`) in the one child: calls that
  an earlier test's streams left in flight go to a server that has stopped,
  and cannot wait on, or take items from, this test's tables.
  """

  def __init__(self):
    super().__init__(serve, TIMEOUT)
    self.new_server()

  def new_server(self) -> None:
    self.pipe.send("new")
    self.address, self.secret = self.receive("start")

  def client(self, timeout: float | None = TIMEOUT) -> replay.Client:
    return replay.Client(self.address, secret=self.secret, timeout=timeout)

  def stop_server(self) -> None:
    """Has the child stop its server (tables close first), and waits for it to exit."""
    self.pipe.send("stop")
    self.process.join(TIMEOUT)
    assert self.process.exitcode == 0


@pytest.fixture(scope="module")
def child() -> Iterator[Child]:
  server = Child()
  yield server
  server.kill()


@pytest.fixture
def client(child) -> Iterator[replay.Client]:
  """A client of a fresh server in the shared child process."""
  child.new_server()
  client = child.client()
  yield client
  client.close()


def step(i: int) -> Step:
  return Step(
    np.full(3, i, np.float32), {"step": np.int64(i), "pair": (np.int32(i), np.bool_(i % 2))}
  )


def steps_of(batch: ReplaySample) -> list[int]:
  return batch.data.extras["step"].tolist()


# What comes out.


def test_batches_come_in_the_structure_sample_batch_gives_in_fifo_order(client):
  client.insert_batch([step(i) for i in range(88)], {"queue": 1.0})
  expected = client.sample_batch("queue", 8)  # steps 0-7
  with client.stream("queue", 8, max_in_flight_batches=3) as stream:
    batches = [next(stream) for _ in range(10)]
  for batch in [expected, *batches]:
    assert isinstance(batch, ReplaySample)
    assert type(batch.data) is Step
    assert batch.data.obs.shape == (8, 3) and batch.data.obs.dtype == np.float32
    assert batch.data.extras["pair"][0].dtype == np.int32
    assert batch.data.extras["pair"][1].dtype == np.bool_
    assert batch.info.key.shape == batch.info.probability.shape == (8,)
    np.testing.assert_array_equal(batch.data.obs[:, 0], np.asarray(steps_of(batch), np.float32))
  # Each call takes its 8 in one go: runs of the queue, together the rest of it.
  runs = sorted(steps_of(b) for b in batches)
  assert runs == [list(range(i, i + 8)) for i in range(8, 88, 8)]


def test_a_batch_comes_as_soon_as_any_call_in_flight_completes(client):
  with client.stream("queue", 4, max_in_flight_batches=2, num_workers=2) as stream:
    seen = []
    for round_ in range(8):
      # Two calls wait on the empty queue; 4 items complete one of them, either one.
      wait_until(lambda: pending_samples(client, "queue") == 2, "two calls waiting")
      client.insert_batch([step(4 * round_ + i) for i in range(4)], {"queue": 1.0})
      batch = next(stream)
      assert sorted(steps_of(batch)) == list(range(4 * round_, 4 * round_ + 4))
      seen += steps_of(batch)
  assert sorted(seen) == list(range(32))


def test_every_item_arrives_once_over_several_connections(client):
  client.insert_batch([step(i) for i in range(400)], {"queue": 1.0})
  with client.stream("queue", 10, max_in_flight_batches=6, num_workers=3) as stream:
    steps = [s for _ in range(40) for s in steps_of(next(stream))]
  assert sorted(steps) == list(range(400))


# How much is in flight.


def test_calls_in_flight_never_exceed_the_bound(client):
  def stats() -> dict[str, int]:
    return client.table_stats()["counted"]

  sampled = stats()["num_samples"]  # counted over the table's life
  with client.stream("counted", 4, max_in_flight_batches=3, num_workers=2) as stream:
    # The table is empty: every call the stream sent waits on the server.
    wait_until(lambda: stats()["running_samples"] == 3, "3 sample calls running")
    assert pending_samples(client, "counted") == 3
    assert stream.in_flight == 3
    client.insert_batch([step(i) for i in range(50)], {"counted": 1.0})
    for _ in range(60):
      batch = next(stream)
      assert len(batch.info.key) == 4
      assert stream.in_flight <= 3
    wait_until(
      lambda: stats()["num_samples"] - sampled == 4 * 63, "the 3 prefetched batches sampled"
    )
    assert stream.in_flight == 3
  assert stats()["most_running_samples"] == 3
  wait_until(lambda: stats()["running_samples"] == 0, "no sample call left running")
  assert stats()["num_samples"] - sampled == 4 * 63  # closing sent nothing more


def test_a_timeout_names_the_table_when_a_min_size_limiter_blocks(client):
  client.insert_batch([step(i) for i in range(5)], {"min_size": 1.0})  # MinSize(10)
  with client.stream("min_size", 4, max_in_flight_batches=2, timeout=0.3) as stream:
    start = time.monotonic()
    with pytest.raises(
      errors.CallTimeoutError, match=r"table 'min_size'.*0\.3 s timeout"
    ) as raised:
      next(stream)
    assert time.monotonic() - start >= 0.3
    assert isinstance(raised.value, lp.CallTimeoutError)
    assert "Insert more, or give the stream a longer timeout" in str(raised.value)
    assert not stream.closed  # the stream stays open: calling next() waits again
    assert stream.in_flight == 2


# How it ends.


def test_close_while_calls_are_in_flight_releases_them(client):
  sampled = client.table_stats()["counted"]["num_samples"]
  stream = client.stream("counted", 4, max_in_flight_batches=3, num_workers=2, timeout=5.0)
  wait_until(lambda: client.table_stats()["counted"]["running_samples"] == 3, "3 calls running")
  stream.close()
  assert stream.closed and stream.in_flight == 0
  with pytest.raises(StopIteration):
    next(stream)
  # On the server, the calls end within their limiter timeout (5 s) and sample nothing.
  wait_until(lambda: client.table_stats()["counted"]["running_samples"] == 0, "the calls ended")
  assert client.table_stats()["counted"]["num_samples"] == sampled
  stream.close()  # idempotent


def test_close_from_another_thread_wakes_a_waiting_next(client):
  stream = client.stream("counted", 4, max_in_flight_batches=2, timeout=None)
  outcome = {}

  def consume():
    try:
      outcome["batch"] = next(stream)
    except StopIteration:
      outcome["stopped"] = True

  consumer = threading.Thread(target=consume)
  consumer.start()
  wait_until(lambda: pending_samples(client, "counted") == 2, "the stream's calls waiting")
  stream.close()
  consumer.join(TIMEOUT)
  assert not consumer.is_alive()
  assert outcome == {"stopped": True}
  # The calls wait for the table without a timeout: an item lets them end.
  client.insert(step(0), {"counted": 1.0})
  wait_until(lambda: pending_samples(client, "counted") == 0, "the calls ended")


def test_the_server_stopping_ends_the_stream_with_table_closed_error():
  server = Child()
  try:
    client = server.client()
    stream = client.stream("queue", 4, max_in_flight_batches=2, timeout=None)
    wait_until(lambda: pending_samples(client, "queue") == 2, "the stream's calls waiting")
    server.stop_server()  # closes the tables: the waiting calls are told so
    with pytest.raises(TableClosedError, match="table 'queue' is closed"):
      next(stream)
    assert stream.closed
    with pytest.raises(StopIteration):
      next(stream)
  finally:
    server.kill()


def test_the_server_dying_ends_the_stream_with_connection_lost_error():
  server = Child()
  try:
    client = server.client()
    stream = client.stream("queue", 4, max_in_flight_batches=2, num_workers=2, timeout=None)
    wait_until(lambda: pending_samples(client, "queue") == 2, "the stream's calls waiting")
    server.kill()
    with pytest.raises(errors.ConnectionLostError, match="closed the connection"):
      next(stream)
    assert stream.closed
  finally:
    server.kill()


# Bad input.


def test_bad_arguments_are_refused_naming_them(client, child):
  for kwargs, message in (
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
    ({"batch_size": replay.MAX_SAMPLES_PER_CALL + 1}, "at most replay.MAX_SAMPLES_PER_CALL"),
    ({"batch_size": 4, "max_in_flight_batches": 0}, "max_in_flight_batches must be an integer"),
    ({"batch_size": 4, "num_workers": True}, "num_workers must be an integer"),
    (
      {"batch_size": 4, "max_in_flight_batches": 2, "num_workers": 3},
      r"num_workers \(3\) must be at most max_in_flight_batches \(2\)",
    ),
    ({"batch_size": 4, "timeout": -1}, "timeout"),
  ):
    with pytest.raises(ValueError, match=message):
      client.stream("queue", **kwargs)
  bare = replay.Client(CourierClient(child.address, secret=child.secret, label="replay"))
  with pytest.raises(ValueError, match=r"num_workers=2: .*use num_workers=1"):
    bare.stream("queue", 4, num_workers=2)
  bare.close()


def test_an_unknown_table_ends_the_stream_at_the_first_batch_naming_it(client):
  stream = client.stream("nope", 4)
  with pytest.raises(ValueError, match=r"no table named 'nope'.*tables: 'queue'"):
    next(stream)
  assert stream.closed


def test_a_client_made_from_a_courier_client_streams_over_its_connection(client, child):
  client.insert_batch([step(i) for i in range(12)], {"queue": 1.0})
  courier = CourierClient(child.address, secret=child.secret, label="replay")
  bare = replay.Client(courier, timeout=TIMEOUT)
  with bare.stream("queue", 4, max_in_flight_batches=2) as stream:
    batches = [steps_of(next(stream)) for _ in range(3)]
  # Each call takes 4 items from the queue at once; two in flight may complete in either order.
  assert sorted(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
  assert bare.table_stats()["queue"]["size"] == 0  # the client's own connection is still open
  bare.close()


# In a program.


def streaming_learner(replay_client: replay.Client) -> None:
  """Streams batches until the program stops; reports how many it took after the first 5."""
  with replay_client.stream("experience", 8, max_in_flight_batches=4, num_workers=2) as stream:
    for taken, _ in enumerate(stream, 1):
      if taken == 5:
        replay_client.insert({"taken": np.int64(taken)}, {"learner_done": 1.0})


def filler(replay_client: replay.Client) -> None:
  replay_client.insert_batch([step(i) for i in range(64)], {"experience": 1.0})


def program_tables() -> list[Table]:
  return [
    Table("experience", sel.Uniform(), sel.Fifo(), 1000, rl.MinSize(1)),
    Table.queue("learner_done", 1),
  ]


def test_a_learner_streams_from_a_replay_node_and_the_stop_ends_it_as_stopped(
  tmp_path, monkeypatch
):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  program = lp.Program("streaming")
  replay_handle = program.add_node(lp.ReplayNode(program_tables))
  program.add_node(lp.PyNode(filler, replay_handle), label="filler")
  program.add_node(lp.PyNode(streaming_learner, replay_handle), label="learner")
  controller = lp.launch(
    program, launch_type="local_mp", terminal="output_to_files", grace_period=5.0
  )
  try:
    client = replay_handle.dereference().with_timeout(TIMEOUT)
    [report] = client.sample("learner_done")
    assert report.data["taken"] == 5
    # The learner keeps streaming (in another process, over two connections of its own).
    before = client.table_stats()["experience"]["num_samples"]
    wait_until(
      lambda: client.table_stats()["experience"]["num_samples"] > before + 8, "more batches"
    )
    controller.stop(timeout=TIMEOUT)
    assert controller.wait(TIMEOUT)  # raises NodeFailedError if the learner counted as failed
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []

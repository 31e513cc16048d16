"""Streams of a same-host server: batches through a ring of shared slots (replay/ring.py).

The server runs in a spawned child process and the learner here (or in a
second child, to be SIGKILLed); the ring is a real memfd passed over a real
abstract Unix socket. Whether a batch came through the ring is read from
/proc/self/maps: its arrays lie in a mapping of the ring's memfd. Leaks are
counted where the kernel keeps them: /proc/PID/fd and /proc/PID/maps.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from collections import namedtuple
from collections.abc import Iterator

import numpy as np
import pytest

from launchpad import errors, replay
from launchpad.courier.client import Client as CourierClient
from launchpad.replay import ChunkStore, Table, ring
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from tests.crowded import limit_descriptors
from tests.replay.server_child import ServerChild
from tests.replay.waits import pending_samples, wait_until
from tests.shm_names import shm_names

TIMEOUT = 30.0  # bound on every wait
ITEMS = 200
IN_FLIGHT = 2
SLOTS = IN_FLIGHT + ring.EXTRA_SLOTS
Step = namedtuple("Step", ["obs", "extras"])


def step(i: int) -> Step:
  return Step(
    np.full((6, 5), i, np.uint8),
    {
      "step": np.int64(i),
      "pair": (np.float32(i) / 2, np.bool_(i % 2)),
      "text": np.str_(f"s{i:03d}"),
    },
  )


def serve(conn) -> None:
  """Child-process entry point: serves tables "a" and "b" (queues of the same
  steps) and "u" (uniform, the same steps), sends its addresses and pid;
  on "crowd" stops itself from opening any more descriptors (and says
  "crowded"); stops on "stop" or when the parent goes away."""
  store = ChunkStore()
  tables = [
    Table.queue("a", ITEMS, chunk_store=store),
    Table.queue("b", ITEMS, chunk_store=store),
    Table("u", sel.Uniform(), sel.Fifo(), ITEMS, rl.MinSize(1), chunk_store=store),
  ]
  server = replay.Server(tables)
  client = server.localhost_client(timeout=TIMEOUT)
  client.insert_batch([step(i) for i in range(ITEMS)], {"a": 1.0, "b": 1.0, "u": 1.0})
  client.close()
  conn.send((server.address, server.local_address, server.secret, os.getpid()))
  try:
    while conn.recv() == "crowd":
      limit_descriptors(0)
      conn.send("crowded")
  except EOFError:
    pass
  server.stop()


class Child(ServerChild):
  """A replay server (serve) in a spawned child process."""

  def __init__(self):
    super().__init__(serve, TIMEOUT)
    self.tcp, self.unix, self.secret, self.pid = self.receive("start")

  def client(self, address: str) -> replay.Client:
    return replay.Client(address, secret=self.secret, timeout=TIMEOUT)

  def crowd(self) -> None:
    """Lets the server open no more file descriptors (its connections stay)."""
    self.pipe.send("crowd")
    assert self.receive("limit its descriptors") == "crowded"


@pytest.fixture
def child() -> Iterator[Child]:
  server = Child()
  yield server
  server.kill()


def ring_mappings(pid: int | str = "self") -> list[tuple[int, int]]:
  """(start, end) of each mapping of a ring memfd in the process."""
  found = []
  with open(f"/proc/{pid}/maps") as maps:
    for line in maps:
      if f"memfd:{ring.MEMFD_NAME}" in line:
        start, end = line.split()[0].split("-")
        found.append((int(start, 16), int(end, 16)))
  return found


def ring_descriptors(pid: int | str = "self") -> int:
  """Descriptors of ring memfds the process holds."""
  count = 0
  for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
      if ring.MEMFD_NAME in os.readlink(f"/proc/{pid}/fd/{fd}"):
        count += 1
    except FileNotFoundError:
      pass  # closed meanwhile
  return count


def in_ring(array: np.ndarray) -> bool:
  """True if the array's memory lies in a mapping of a ring memfd here."""
  address = array.__array_interface__["data"][0]
  return any(start <= address < end for start, end in ring_mappings())


def check_steps(batch: replay.ReplaySample) -> list[int]:
  """The batch's steps, after checking every column is the step's own."""
  steps = batch.data.extras["step"].tolist()
  assert (batch.data.obs == np.array(steps, np.uint8)[:, None, None]).all()
  assert batch.data.extras["pair"][0].tolist() == [i / 2 for i in steps]
  assert batch.data.extras["pair"][1].tolist() == [bool(i % 2) for i in steps]
  assert batch.data.extras["text"].tolist() == [f"s{i:03d}" for i in steps]
  return steps


def test_batches_through_the_ring_equal_the_in_band_ones(child):
  unix, tcp = child.client(child.unix), child.client(child.tcp)
  with unix.stream("a", 8, max_in_flight_batches=1) as shared:
    with tcp.stream("b", 8, max_in_flight_batches=1) as streamed:
      for _ in range(10):
        ours, theirs = next(shared), next(streamed)
        assert in_ring(ours.data.obs) and not in_ring(theirs.data.obs)
        assert not ours.data.obs.flags.writeable
        assert type(ours.data) is type(theirs.data) is Step
        assert check_steps(ours) == check_steps(theirs)
        for column in ("obs",):
          a, b = getattr(ours.data, column), getattr(theirs.data, column)
          assert a.dtype == b.dtype and a.shape == b.shape
        for field in ("key", "probability", "table_size", "priority", "times_sampled"):
          a, b = getattr(ours.info, field), getattr(theirs.info, field)
          assert a.dtype == b.dtype and a.tolist() == b.tolist(), field
        assert in_ring(ours.info.key)  # the info comes in the slot too
  unix.close()
  tcp.close()


def test_a_learner_holding_every_batch_falls_back_in_band_and_never_blocks(child):
  client = child.client(child.unix)
  held = []
  with client.stream("u", 4, max_in_flight_batches=IN_FLIGHT, timeout=TIMEOUT) as stream:
    for _ in range(SLOTS + 10):
      held.append(next(stream))  # a next() that waited for a slot would time out
  shared = [in_ring(b.data.obs) for b in held]
  assert sum(shared) <= SLOTS
  assert shared.count(False) >= 10
  for batch in held:
    check_steps(batch)
    assert not batch.data.obs.flags.writeable  # in band too: the same whichever way it came
  client.close()


def next_batch(stream: replay.Stream) -> replay.ReplaySample:
  """The stream's next batch, through the timeouts of a short stream timeout:
  a call that waits on the server for its whole timeout may answer after
  the next() that waited for it gave up (the stream stays open)."""
  for _ in range(round(TIMEOUT / stream.timeout)):
    try:
      return next(stream)
    except errors.CallTimeoutError:
      continue
  pytest.fail(f"no batch of table {stream.table!r} within {TIMEOUT:g} s")


def test_a_short_first_batch_makes_slots_that_fit_the_full_ones(child):
  other = child.client(child.tcp)
  assert len(other.sample_batch("a", ITEMS - 3).info.key) == ITEMS - 3  # 3 left in the queue
  client = child.client(child.unix)
  with client.stream("a", 7, max_in_flight_batches=1, timeout=0.5) as stream:
    short = next_batch(stream)  # the 3 items, once its call has waited for more
    assert check_steps(short) == [ITEMS - 3, ITEMS - 2, ITEMS - 1]
    assert in_ring(short.data.obs)
    other.insert_batch([step(i) for i in range(ITEMS, ITEMS + 14)], {"a": 1.0})
    full = [next_batch(stream) for _ in range(2)]
  assert [check_steps(batch) for batch in full] == [
    list(range(ITEMS, ITEMS + 7)),
    list(range(ITEMS + 7, ITEMS + 14)),
  ]
  assert all(in_ring(batch.data.obs) for batch in full)  # the slots were sized for 7
  other.close()
  client.close()


def test_slots_come_back_when_the_arrays_are_dropped(child):
  client = child.client(child.unix)
  with client.stream("u", 4, max_in_flight_batches=IN_FLIGHT, num_workers=1) as stream:
    # Dropped at once: every batch comes through the ring.
    for _ in range(3 * SLOTS):
      assert in_ring(next(stream).data.obs)
    # Held: the ring runs out, and the batches come in band.
    held = [next(stream) for _ in range(SLOTS + 2)]
    assert not in_ring(held[-1].data.obs)
    # One view of one column keeps its batch's slot.
    kept = held[0].data.obs[0]
    assert in_ring(kept)
    held.clear()
    # The others come back with the next calls (the first ones were sent before).
    start = kept.__array_interface__["data"][0]
    shared = []
    for _ in range(4 * SLOTS):
      obs = next(stream).data.obs
      shared.append(in_ring(obs))
      assert obs.__array_interface__["data"][0] != start  # the slot held is not written over
    assert shared.count(True) >= 3 * SLOTS
    assert (kept == kept[0, 0]).all()
  client.close()


def test_a_closed_stream_frees_its_ring(child):
  client = child.client(child.unix)
  stream = client.stream("u", 4, max_in_flight_batches=IN_FLIGHT)
  batch = next(stream)
  assert in_ring(batch.data.obs)
  assert ring_descriptors(child.pid) == 1 and len(ring_mappings(child.pid)) == 1
  stream.close()
  wait_until(lambda: not ring_descriptors(child.pid), "the server closing the ring's memfd")
  wait_until(lambda: not ring_mappings(child.pid), "the server unmapping the ring")
  check_steps(batch)  # a batch taken stays valid after close
  del batch
  gc.collect()
  assert not ring_mappings() and not ring_descriptors()
  client.close()


def test_sigkill_of_the_server_leaves_no_memfd_in_the_learner(child):
  shm = shm_names()
  client = child.client(child.unix)
  # Two calls take the whole queue; the third waits on the server when it dies.
  stream = client.stream("a", ITEMS // 2, max_in_flight_batches=2, timeout=TIMEOUT)
  batch = next(stream)
  assert in_ring(batch.data.obs)
  wait_until(lambda: pending_samples(client, "a") == 1, "the stream's third call waiting")
  child.kill()
  with pytest.raises(errors.ConnectionLostError):
    for _ in range(2):
      next(stream)
  assert stream.closed
  check_steps(batch)  # still mapped while the learner holds it
  del batch
  gc.collect()
  assert not ring_mappings() and not ring_descriptors()
  assert shm_names() == shm
  client.close()


def learn(address: str, secret: bytes, conn) -> None:
  """Child-process entry point: streams from the server, holds a batch, says so, waits."""
  client = replay.Client(address, secret=secret, timeout=TIMEOUT)
  stream = client.stream("u", 4, max_in_flight_batches=IN_FLIGHT)
  batch = next(stream)
  conn.send(batch.data.obs.flags.writeable)
  conn.recv()  # until SIGKILLed


def test_sigkill_of_the_learner_leaves_no_memfd_in_the_server(child):
  shm = shm_names()
  context = multiprocessing.get_context("spawn")
  pipe, child_end = context.Pipe()
  learner = context.Process(target=learn, args=(child.unix, child.secret, child_end), daemon=True)
  learner.start()
  child_end.close()
  try:
    assert pipe.poll(TIMEOUT), "the learner took no batch"
    assert pipe.recv() is False  # a read-only view of the ring
    assert ring_descriptors(child.pid) == 1
    assert len(ring_mappings(learner.pid)) == 1
    os.kill(learner.pid, signal.SIGKILL)
    learner.join(TIMEOUT)
    wait_until(lambda: not ring_descriptors(child.pid), "the server closing the dead ring")
    wait_until(lambda: not ring_mappings(child.pid), "the server unmapping the dead ring")
    assert shm_names() == shm
    # The server goes on serving.
    client = child.client(child.unix)
    with client.stream("u", 4) as stream:
      assert in_ring(next(stream).data.obs)
    client.close()
  finally:
    if learner.is_alive():
      os.kill(learner.pid, signal.SIGKILL)
    learner.join(TIMEOUT)
    pipe.close()


def test_streams_over_tcp_keep_their_batches_in_band(child):
  client = child.client(child.tcp)
  with client.stream("u", 4) as stream:
    batch = next(stream)
  assert not in_ring(batch.data.obs) and not ring_descriptors(child.pid)
  check_steps(batch)
  client.close()


def test_a_server_that_cannot_make_a_ring_sends_the_batches_in_band(child):
  courier = CourierClient(child.unix, secret=child.secret, label="replay")
  client = replay.Client(courier, timeout=TIMEOUT)
  client.table_stats()  # the connection, which this thread's stream then takes over
  child.crowd()  # no descriptor for a socket to the learner's, nor for a memfd
  with client.stream("u", 4, max_in_flight_batches=IN_FLIGHT, timeout=TIMEOUT) as stream:
    batches = [next(stream) for _ in range(SLOTS + 2)]
  for batch in batches:
    assert not in_ring(batch.data.obs)
    check_steps(batch)
    assert not batch.data.obs.flags.writeable  # in band, read-only as from the ring
  assert not ring_descriptors(child.pid) and not ring_mappings(child.pid)
  client.close()


def test_a_bad_ring_request_is_refused_naming_what_is_wrong(child):
  courier = CourierClient(child.unix, secret=child.secret, timeout=TIMEOUT)
  token = bytes(16)
  for request, message in (
    ((1, "@launchpad-courier", token, 4, []), "socket name '@launchpad-courier' is not a stream's"),
    ((1, None, token, 0, []), "slots must be 1..1024, got 0"),
    ((1, None, b"short", 4, []), "token b'short'"),
    ("ring", "expected a stream's ring request"),
  ):
    with pytest.raises(ValueError, match=message):
      courier.stream_sample("u", 1, TIMEOUT, request)
  assert not ring_descriptors(child.pid)
  courier.close()

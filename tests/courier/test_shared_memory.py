"""Large arrays between processes of one host: sealed memfds, read-only, and nothing left behind.

Readers and writers are real processes (spawned) with real 256 MiB arrays
where a process is killed; the tests count the processes' descriptors and
mappings of courier's memfds (/proc/PID/fd, /proc/PID/maps) and the entries
of /dev/shm before and after.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from typing import Any, NamedTuple

import numpy as np
import psutil
import pytest

from launchpad import errors
from launchpad.courier import shared_memory
from launchpad.courier.client import Client
from launchpad.courier.server import Server

TIMEOUT = 60.0  # bounds every wait; a loaded machine spawns and copies slowly
LABEL = "shm_svc[0]"
MIB = 1 << 20
THRESHOLD = MIB  # the tests' processes' (the default, 32 MiB, would make them slow)
BIG = 16 * MIB  # well above it
HUGE = 256 * MIB  # what a process is killed in the middle of
SEGMENT = "memfd:" + shared_memory.MEMFD_NAME


def memfd_descriptors(pid: int) -> int:
  """How many of process `pid`'s descriptors are courier memfds."""
  count = 0
  for name in os.listdir(f"/proc/{pid}/fd"):
    try:
      count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("/" + SEGMENT)
    except OSError:
      continue  # closed meanwhile
  return count


def memfd_mappings(pid: int) -> int:
  """How many mappings of courier memfds process `pid` has."""
  with open(f"/proc/{pid}/maps") as maps:
    return sum(SEGMENT in line for line in maps)


def shm_entries() -> set[str]:
  """/dev/shm's entries, less POSIX semaphores (sem.*: multiprocessing's, made and
  unlinked at once by any process of the machine; courier makes no names at all)."""
  return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


def wait_until(condition: Callable[[], bool], what: str) -> None:
  """Waits (bounded) for `condition`, which another process or thread makes true."""
  end = time.monotonic() + TIMEOUT
  while not condition():
    if time.monotonic() > end:
      pytest.fail(f"timed out waiting until {what}")
    time.sleep(0.001)


def pattern(nbytes: int, seed: int) -> np.ndarray:
  """An array whose every page differs, so a wrong or torn mapping shows."""
  words = np.arange(-(-nbytes // 8), dtype=np.uint64)
  words *= 2654435761
  words += seed
  return words.view(np.uint8)[:nbytes]


def digest(array: np.ndarray) -> int:
  return int(array.reshape(-1).view(np.uint8)[::509].astype(np.uint64).sum())


class Holder:
  """The served object: describes, makes and keeps arrays; events order the tests."""

  def __init__(self):
    self.held: list[np.ndarray] = []
    self.holding = threading.Event()
    self.release = threading.Event()

  def pid(self) -> int:
    return os.getpid()

  def describe(self, array: np.ndarray) -> tuple[bool, int, int]:
    """(writeable, digest, courier mappings) of a received array, in the receiver."""
    return array.flags.writeable, digest(array), memfd_mappings(os.getpid())

  def make(self, nbytes: int, seed: int) -> np.ndarray:
    return pattern(nbytes, seed)

  def echo(self, value: Any) -> Any:
    return value

  def write(self, array: np.ndarray) -> None:
    array[0] = 1

  def hold(self, array: np.ndarray) -> int:
    self.held.append(array)
    return len(self.held)

  def held_digests(self) -> list[int]:
    return [digest(a) for a in self.held]

  def drop(self) -> None:
    self.held.clear()

  def hold_and_block(self, array: np.ndarray) -> bool:
    """Keeps `array` mapped while it blocks until released."""
    self.held.append(array)
    self.holding.set()
    return self.release.wait(TIMEOUT)

  def wait_holding(self) -> bool:
    return self.holding.wait(TIMEOUT)


def serve(pipe, secret: bytes) -> None:
  """Child-process server of a Holder until the parent closes its pipe."""
  server = Server(Holder(), secret=secret, label=LABEL)
  server.start()
  pipe.send((server.address, server.local_address))
  with contextlib.suppress(EOFError):
    pipe.recv()
  server.stop()


def write_from_child(pipe, address: str, secret: bytes, nbytes: int) -> None:
  """Child-process writer: sends its array for each command ("hold" once,
  "loop" until killed), saying so on the pipe."""
  array = pattern(nbytes, seed=7)
  client = Client(address, secret=secret, label=LABEL, timeout=TIMEOUT)
  client.pid()  # connected
  pipe.send("ready")
  while True:
    command = pipe.recv()
    if command == "hold":
      pipe.send(client.hold(array))
    elif command == "loop":
      for _ in range(1000):  # bounded; the parent kills it long before
        client.describe(array)


class Child(NamedTuple):
  process: Any
  pipe: Any

  @property
  def pid(self) -> int:
    return self.process.pid

  def kill(self) -> None:
    if self.process.is_alive():
      os.kill(self.process.pid, signal.SIGKILL)
    self.process.join(TIMEOUT)
    self.process.close()  # its sentinel descriptor
    self.pipe.close()


def spawn(target, *args) -> Child:
  context = multiprocessing.get_context("spawn")
  parent, child = context.Pipe()
  process = context.Process(target=target, args=(child, *args), daemon=True)
  process.start()
  child.close()
  if not parent.poll(TIMEOUT):
    os.kill(process.pid, signal.SIGKILL)
    pytest.fail(f"the child {target.__name__} did not start within {TIMEOUT} s")
  return Child(process, parent)


class Served(NamedTuple):
  child: Child
  tcp: str
  unix: str
  secret: bytes

  def client(self, transport: str = "unix") -> Client:
    address = self.unix if transport == "unix" else self.tcp
    return Client(address, secret=self.secret, label=LABEL, timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def threshold(monkeypatch) -> None:
  """The threshold of this process and of the children it spawns."""
  monkeypatch.setenv(shared_memory.THRESHOLD_VARIABLE, str(THRESHOLD))


@pytest.fixture
def served() -> Iterator[Served]:
  """A Holder served by a child process of this test alone (the test may kill it)."""
  secret = os.urandom(32)
  child = spawn(serve, secret)
  tcp, unix = child.pipe.recv()
  yield Served(child, tcp, unix, secret)
  child.kill()


@pytest.fixture
def local() -> Iterator[tuple[Server, Holder, bytes]]:
  """A Holder served in this process, for writers in other processes."""
  resource_tracker.ensure_running()  # spawning starts it once, with a descriptor of its own
  holder, secret = Holder(), os.urandom(32)
  server = Server(holder, secret=secret, label=LABEL)
  server.start()
  yield server, holder, secret
  holder.release.set()
  server.stop()


def test_large_arrays_travel_as_read_only_shared_memory_both_ways(served):
  client = served.client("unix")
  sent = pattern(BIG, seed=1)
  writeable, seen, mapped = client.describe(sent)
  assert (writeable, seen) == (False, digest(sent))
  assert mapped >= 1  # the server's array is its mapping of the memfd
  result = client.make(BIG, 2)
  assert result.dtype == np.uint8 and not result.flags.writeable
  assert np.array_equal(result, pattern(BIG, 2))
  assert memfd_mappings(os.getpid()) == 1 and memfd_descriptors(os.getpid()) == 0
  with pytest.raises(ValueError, match="read-only"):
    result[0] = 1
  with pytest.raises(ValueError, match="read-only"):
    client.write(sent)  # the server's received array is read-only too
  writable = result.copy()  # what a caller who wants to modify does
  writable[0] = 1
  del result
  assert memfd_mappings(os.getpid()) == 0  # freed with the last reader's array
  client.close()


def test_small_arrays_and_tcp_stay_in_the_stream(served):
  small = pattern(THRESHOLD - 1, seed=3)
  with contextlib.closing(served.client("unix")) as client:
    assert client.describe(small) == (True, digest(small), 0)
    assert client.make(small.nbytes, 3).flags.writeable
  big = pattern(BIG, seed=4)
  with contextlib.closing(served.client("tcp")) as client:
    assert client.describe(big) == (True, digest(big), 0)  # TCP cannot pass descriptors
    result = client.make(BIG, 4)
    assert result.flags.writeable and np.array_equal(result, big)
  assert memfd_mappings(os.getpid()) == 0


def test_one_frame_mixes_shared_and_streamed_buffers_and_futures_carry_them(served):
  values = [pattern(BIG, seed=i) if i % 2 else np.full(10, i) for i in range(6)]
  with contextlib.closing(served.client("unix")) as client:
    futures = [client.futures.echo(values) for _ in range(4)]  # in flight together
    for future in futures:
      echoed = future.result(TIMEOUT)
      assert [v.flags.writeable for v in echoed] == [True, False] * 3
      assert all(np.array_equal(a, b) for a, b in zip(echoed, values, strict=True))
    del echoed, future, futures
  assert memfd_mappings(os.getpid()) == 0


def test_the_threshold_is_set_by_the_environment(local, monkeypatch):
  server, _, secret = local

  def arrives_writable(nbytes: int) -> bool:
    with contextlib.closing(Client(server.local_address, secret=secret, timeout=TIMEOUT)) as c:
      return c.describe(np.zeros(nbytes, np.uint8))[0]

  monkeypatch.delenv(shared_memory.THRESHOLD_VARIABLE)
  assert shared_memory.threshold() == shared_memory.DEFAULT_THRESHOLD
  monkeypatch.setenv(shared_memory.THRESHOLD_VARIABLE, "4096")
  assert not arrives_writable(4096) and arrives_writable(4095)
  monkeypatch.setenv(shared_memory.THRESHOLD_VARIABLE, "off")
  assert arrives_writable(BIG)
  monkeypatch.setenv(shared_memory.THRESHOLD_VARIABLE, "lots")
  client = Client(server.local_address, secret=secret, timeout=TIMEOUT)
  with pytest.raises(ValueError) as raised:
    client.pid()
  message = str(raised.value)
  assert shared_memory.THRESHOLD_VARIABLE in message and "'lots'" in message
  assert "number of bytes" in message and "'off'" in message


def test_no_descriptor_mapping_or_name_outlives_the_arrays(served):
  client = served.client("unix")
  server_pid = client.pid()
  me = psutil.Process()
  before = (me.num_fds(), psutil.Process(server_pid).num_fds(), shm_entries())
  for seed in range(3):
    result = client.echo(pattern(BIG, seed))
    assert not result.flags.writeable and np.array_equal(result, pattern(BIG, seed))
  del result
  after = (me.num_fds(), psutil.Process(server_pid).num_fds(), shm_entries())
  assert after == before
  assert memfd_mappings(os.getpid()) == memfd_mappings(server_pid) == 0
  assert memfd_descriptors(os.getpid()) == memfd_descriptors(server_pid) == 0
  client.close()


def test_a_reader_that_keeps_its_array_holds_its_mapping_and_no_descriptor(local):
  """The writer is SIGKILLed after sending; the reader's array lives on, on its mapping alone."""
  server, holder, secret = local
  me = psutil.Process()
  before = (me.num_fds(), shm_entries())
  writer = spawn(write_from_child, server.local_address, secret, HUGE)
  try:
    assert writer.pipe.recv() == "ready"
    writer.pipe.send("hold")
    assert writer.pipe.poll(TIMEOUT) and writer.pipe.recv() == 1
    assert memfd_descriptors(writer.pid) == 0  # the writer closed its memfd once sent
  finally:
    writer.kill()
  wait_until(lambda: me.num_fds() == before[0], "the server closed the writer's connection")
  assert shm_entries() == before[1]
  assert memfd_descriptors(os.getpid()) == 0 and memfd_mappings(os.getpid()) == 1
  assert holder.held_digests() == [digest(pattern(HUGE, seed=7))]  # intact after the writer died
  holder.drop()
  assert memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_reader_with_the_descriptor_in_flight(served):
  """The reader is stopped, the writer sends (its memfd is then only in the
  reader's queue), and the reader is SIGKILLed: nothing is left."""
  me = psutil.Process()
  before = (me.num_fds(), shm_entries())
  client = served.client("unix")
  assert client.futures.pid().result(TIMEOUT) == served.child.pid  # connected
  os.kill(served.child.pid, signal.SIGSTOP)
  try:
    future = client.futures.describe(pattern(HUGE, seed=5))  # sent when this returns
    assert memfd_descriptors(os.getpid()) == 0  # only the reader's queue holds it
  finally:
    os.kill(served.child.pid, signal.SIGKILL)  # the fixture reaps it
  with pytest.raises(errors.ConnectionLostError, match=LABEL.replace("[", r"\[")):
    future.result(TIMEOUT)
  client.close()
  assert (me.num_fds(), shm_entries()) == before
  assert memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_reader_while_it_maps_the_array(served):
  me = psutil.Process()
  before = (me.num_fds(), shm_entries())
  client, watcher = served.client("unix"), served.client("unix")
  assert client.pid() == watcher.pid() == served.child.pid
  future = client.futures.hold_and_block(pattern(HUGE, seed=6))
  assert watcher.wait_holding()
  assert memfd_mappings(served.child.pid) == 1 and memfd_descriptors(served.child.pid) == 0
  os.kill(served.child.pid, signal.SIGKILL)  # the fixture reaps it
  with pytest.raises(errors.ConnectionLostError):
    future.result(TIMEOUT)
  client.close()
  watcher.close()
  assert (me.num_fds(), shm_entries()) == before
  assert memfd_descriptors(os.getpid()) == memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_writer_mid_transfer(local):
  """The writer is SIGKILLed while it copies its array into a memfd."""
  server, holder, secret = local
  me = psutil.Process()
  before = (me.num_fds(), shm_entries())
  for _ in range(5):  # the copy may finish between two looks
    writer = spawn(write_from_child, server.local_address, secret, HUGE)
    try:
      assert writer.pipe.recv() == "ready"
      writer.pipe.send("loop")
      caught = False
      end = time.monotonic() + TIMEOUT
      while not caught and time.monotonic() < end and writer.process.is_alive():
        caught = memfd_descriptors(writer.pid) > 0
      if caught:
        os.kill(writer.pid, signal.SIGSTOP)
        caught = memfd_descriptors(writer.pid) > 0  # stopped with its memfd open
    finally:
      writer.kill()
    wait_until(lambda: me.num_fds() == before[0], "the server closed the writer's connection")
    if caught:
      break
  else:
    pytest.fail("the writer was never caught copying its array")
  assert shm_entries() == before[1]
  assert memfd_descriptors(os.getpid()) == 0
  wait_until(lambda: memfd_mappings(os.getpid()) == 0, "the last call's arrays were dropped")
  assert not holder.held


def test_torch_tensors_and_jax_arrays_arrive_whole(served):
  """A tensor on received shared memory is rebuilt on a copy (torch has no
  read-only flag, and writing to the read-only mapping would crash the
  process); a JAX array, immutable, is made from the mapping."""
  torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch==2.13.0")
  jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed: pip install jax jaxlib")
  tensor = torch.arange(BIG // 4, dtype=torch.float32).reshape(-1, 1024)
  array = jnp.arange(BIG // 4, dtype=jnp.float32)
  with contextlib.closing(served.client("unix")) as client:
    back = client.echo(tensor)
    assert torch.equal(back, tensor)
    back[0, 0] = -1.0  # its own memory, writable
    assert bool((client.echo(array) == array).all())

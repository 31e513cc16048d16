"""Large arrays between processes of one host: sealed memfds, read-only, and nothing left behind.

Readers and writers are real processes (spawned) with real 256 MiB arrays
where a process is killed; the tests compare the processes' descriptors
(/proc/PID/fd), their mappings of courier's memfds (/proc/PID/maps) and the
names in /dev/shm before and after.

A test judges only what it made: a descriptor that appeared during it and is
still open, not one that an earlier test's connection closes meanwhile (a
server's connection thread closes its side when it gets to it). Where the
other side of a connection closes or drops something on its own thread, the
test waits (bounded) for it.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from typing import Any, NamedTuple

import numpy as np
import pytest

from launchpad import errors
from launchpad.courier import protocol, serialization, shared_memory
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from launchpad.timeouts import Deadline
from tests.shm_names import shm_names

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


def descriptors(pid: int) -> set[str]:
  """Process `pid`'s open descriptors as 'fd -> what it is'. Sockets and pipes
  are named by inode, so a new one never looks like one closed meanwhile."""
  found = set()
  for name in os.listdir(f"/proc/{pid}/fd"):
    try:
      found.add(f"{name} -> {os.readlink(f'/proc/{pid}/fd/{name}')}")
    except OSError:
      continue  # closed meanwhile (the listing's own descriptor among them)
  return found


class Baseline:
  """The descriptors of some processes and the names in /dev/shm at one time,
  to tell what appeared since and is still there."""

  def __init__(self, *pids: int):
    self.descriptors = {pid: descriptors(pid) for pid in pids or (os.getpid(),)}
    self.names = shm_names()

  def added(self) -> dict[str, set[str]]:
    """What is open or named now and was not then ({} if nothing)."""
    added = {f"pid {pid}": descriptors(pid) - then for pid, then in self.descriptors.items()}
    added["/dev/shm"] = shm_names() - self.names
    return {where: what for where, what in added.items() if what}

  def wait_until_nothing_added(self, what: str) -> None:
    """Waits (bounded) until nothing the test made is open or named any more;
    the failure says what is left."""
    left: dict[str, set[str]] = {}

    def nothing_left() -> bool:
      nonlocal left
      left = self.added()
      return not left

    wait_until(nothing_left, what, lambda: f"still there: {left}")


def wait_until(
  condition: Callable[[], bool], what: str, explain: Callable[[], str] = lambda: ""
) -> None:
  """Waits (bounded) for `condition`, which another process or thread makes true."""
  end = time.monotonic() + TIMEOUT
  while not condition():
    if time.monotonic() > end:
      detail = explain()
      pytest.fail(f"timed out waiting until {what}" + (f" ({detail})" if detail else ""))
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


def accept_one(pipe, name: str) -> socket.socket:
  """A child-process peer's one connection: listens on a Unix address of its
  own, says it on the pipe, and accepts the parent's connection."""
  address = f"{protocol.UNIX_PREFIX}@launchpad-test-{name}-{os.getpid()}"
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(protocol.socket_address(address)[1])
  listener.listen(1)
  pipe.send(address)
  sock, _ = listener.accept()
  listener.close()
  return sock


def accept_out_of_descriptors(pipe, secret: bytes) -> None:
  """Child-process peer that accepts one connection, then takes every
  descriptor it may open, and only then reads the client's handshake and
  offer of a channel; says on the pipe whether it took the channel, then
  echoes one frame."""
  import resource

  sock = accept_one(pipe, "full")
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))  # bounds the loop below
  taken = []
  with contextlib.suppress(OSError):
    while True:
      taken.append(os.open(os.devnull, os.O_RDONLY))
  deadline = Deadline(TIMEOUT, "the handshake of the peer out of descriptors")
  assert protocol.server_handshake(sock, secret, deadline)
  channel = shared_memory.accept(sock, deadline)
  for fd in taken:
    os.close(fd)
  pipe.send(channel is None)
  call = protocol.FrameReader(sock, channel).read(deadline)
  echoed = [memoryview(b) for b in call.buffers]
  protocol.send_frame(sock, protocol.REPLY, 0, call.call_id, call.payload, echoed)
  pipe.recv()  # until killed


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


def reply_cut_short(pipe, secret: bytes) -> None:
  """Child-process peer that answers a call with a reply it stops writing
  midway: its shared buffer has been passed (the caller maps it), half of its
  streamed buffer follows; then it waits to be killed."""
  sock = accept_one(pipe, "cut")
  deadline = Deadline(TIMEOUT, "the handshake of the cut-short peer")
  assert protocol.server_handshake(sock, secret, deadline)
  channel = shared_memory.accept(sock, deadline)
  call = protocol.FrameReader(sock, channel).read(deadline)
  payload, buffers = serialization.dumps((pattern(BIG, 8), pattern(THRESHOLD // 2, 9)))
  lengths = [b.nbytes for b in buffers]
  streamed = channel.send(call.call_id, lengths, buffers, deadline)[0]
  header = protocol.HEADER.pack(
    protocol.REPLY, protocol.SHARED, len(lengths), call.call_id, len(payload)
  )
  sock.sendall(header + struct.pack(f"<{len(lengths)}Q", *lengths) + payload)
  sock.sendall(streamed[: streamed.nbytes // 2])
  pipe.send("cut")
  pipe.recv()  # until killed


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
  holder.drop()  # a failed test's arrays do not stay mapped for the next tests
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
  # The reader thread completes a future before it drops the reply it read.
  wait_until(lambda: memfd_mappings(os.getpid()) == 0, "the futures' reader dropped the replies")


def test_a_server_out_of_descriptors_declines_the_channel_and_streams():
  secret = os.urandom(32)
  peer = spawn(accept_out_of_descriptors, secret)
  try:
    address = peer.pipe.recv()
    deadline = Deadline(TIMEOUT, "connecting to the peer out of descriptors")
    with contextlib.closing(protocol.connect(address, deadline)) as sock:
      protocol.client_handshake(sock, secret, address, deadline)
      # The kernel finds no descriptor free for the end the client sends and
      # drops it; the server says so, and the connection goes on without.
      assert shared_memory.offer(sock, deadline) is None
      assert peer.pipe.poll(TIMEOUT) and peer.pipe.recv() is True  # it declined
      big = pattern(BIG, seed=5)
      payload, buffers = serialization.dumps(big)
      protocol.send_frame(sock, protocol.REQUEST, 0, 7, payload, buffers)
      reply = protocol.FrameReader(sock).read(deadline)  # streamed: no channel
      assert reply.call_id == 7
      assert np.array_equal(serialization.loads(reply.payload, reply.buffers), big)
  finally:
    peer.kill()


def test_the_threshold_is_set_by_the_environment(local, monkeypatch):
  server, _, secret = local
  baseline = Baseline()

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
  # Nothing of the refused connection is open, though its error (and the
  # frames of its traceback) is still held here.
  baseline.wait_until_nothing_added("the server closed the connections of these calls")


def test_no_descriptor_mapping_or_name_outlives_the_arrays(served):
  client = served.client("unix")
  server_pid = client.pid()
  baseline = Baseline(os.getpid(), server_pid)
  for seed in range(3):
    result = client.echo(pattern(BIG, seed))
    assert not result.flags.writeable and np.array_equal(result, pattern(BIG, seed))
  del result
  assert memfd_mappings(os.getpid()) == memfd_descriptors(os.getpid()) == 0
  # The server sends its reply before its thread drops the call's argument.
  wait_until(lambda: memfd_mappings(server_pid) == 0, "the server dropped the last argument")
  assert baseline.added() == {}
  client.close()


def test_a_reader_that_keeps_its_array_holds_its_mapping_and_no_descriptor(local):
  """The writer is SIGKILLed after sending; the reader's array lives on, on its mapping alone."""
  server, holder, secret = local
  baseline = Baseline()
  writer = spawn(write_from_child, server.local_address, secret, HUGE)
  try:
    assert writer.pipe.recv() == "ready"
    writer.pipe.send("hold")
    assert writer.pipe.poll(TIMEOUT) and writer.pipe.recv() == 1
    assert memfd_descriptors(writer.pid) == 0  # the writer closed its memfd once sent
  finally:
    writer.kill()
  baseline.wait_until_nothing_added("the server closed the writer's connection")
  assert memfd_descriptors(os.getpid()) == 0 and memfd_mappings(os.getpid()) == 1
  assert holder.held_digests() == [digest(pattern(HUGE, seed=7))]  # intact after the writer died
  holder.drop()
  assert memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_reader_with_the_descriptor_in_flight(served):
  """The reader is stopped, the writer sends (its memfd is then only in the
  reader's queue), and the reader is SIGKILLed: nothing is left."""
  baseline = Baseline()
  client = served.client("unix")
  assert client.futures.pid().result(TIMEOUT) == served.child.pid  # connected
  os.kill(served.child.pid, signal.SIGSTOP)
  try:
    future = client.futures.describe(pattern(HUGE, seed=5))  # sent when this returns
    assert memfd_descriptors(os.getpid()) == 0  # only the reader's queue holds it
  finally:
    os.kill(served.child.pid, signal.SIGKILL)  # the fixture reaps it
  with pytest.raises(errors.ConnectionLostError, match=LABEL.replace("[", r"\[")):
    future.result(TIMEOUT)  # failed once the reader closed the connection
  client.close()
  assert baseline.added() == {}
  assert memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_reader_while_it_maps_the_array(served):
  baseline = Baseline()
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
  assert baseline.added() == {}
  assert memfd_descriptors(os.getpid()) == memfd_mappings(os.getpid()) == 0


def test_sigkill_of_the_writer_mid_transfer(local):
  """The writer is SIGKILLed while it copies its array into a memfd."""
  server, holder, secret = local
  baseline = Baseline()
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
    baseline.wait_until_nothing_added("the server closed the writer's connection")
    if caught:
      break
  else:
    pytest.fail("the writer was never caught copying its array")
  assert memfd_descriptors(os.getpid()) == 0
  wait_until(lambda: memfd_mappings(os.getpid()) == 0, "the last call's arrays were dropped")
  assert not holder.held


@pytest.mark.parametrize("how", ["call", "future"])
def test_a_reply_cut_short_after_its_shared_memory_is_freed_without_the_collector(how):
  """The peer passes a reply's memfd, writes half of the rest and is SIGKILLed:
  the caller's error holds no frame of the half-read reply, so its mapping
  goes with the connection (the collector is off), not when a collection
  breaks a cycle."""
  resource_tracker.ensure_running()  # spawning starts it once, with a descriptor of its own
  baseline = Baseline()
  secret = os.urandom(32)
  peer = spawn(reply_cut_short, secret)
  client = Client(peer.pipe.recv(), secret=secret, label=LABEL, timeout=TIMEOUT)
  raised: list[BaseException] = []  # kept, as a caller that reports it later does

  def call() -> None:
    try:
      client.pid()
    except errors.ConnectionLostError as e:
      raised.append(e)

  gc.disable()
  try:
    if how == "future":
      future = client.futures.pid()
    else:
      caller = threading.Thread(target=call, daemon=True)
      caller.start()
    try:
      assert peer.pipe.poll(TIMEOUT) and peer.pipe.recv() == "cut"
      wait_until(lambda: memfd_mappings(os.getpid()) == 1, "the caller mapped the reply's memfd")
    finally:
      peer.kill()
    if how == "future":
      raised.append(future.exception(TIMEOUT))
    else:
      caller.join(TIMEOUT)
    assert len(raised) == 1 and isinstance(raised[0], errors.ConnectionLostError)
    assert LABEL in str(raised[0])
    wait_until(lambda: memfd_mappings(os.getpid()) == 0, "the half-read reply was freed")
    client.close()
    assert baseline.added() == {}
  finally:
    gc.enable()


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

"""Courier deadlines hold whatever the peer does, the accept loop survives a
flood, and Client.close closes the connections of every thread.

Peers that misbehave are real sockets on loopback: threads of this process
that pace their bytes, or child processes stopped with SIGSTOP. Timings are
only bounded from above, generously (a call's timeout plus MARGIN).
"""

from __future__ import annotations

import glob
import os
import platform
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import psutil
import pytest

from launchpad import errors
from launchpad.courier import protocol, serialization
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from launchpad.timeouts import Deadline
from launchpad.tls import TlsConfig
from tests.crowded import crowded_child, limit_descriptors

from .conftest import CHILD_LABEL, TIMEOUT, Service, free_port, in_thread, pick

# How far past its timeout a call may return on a loaded machine.
MARGIN = 10.0
# A dribbling peer sends one byte this often: more often than any timeout
# used here, so that a timeout per read would never fire.
DRIBBLE_SECONDS = 0.5


def elapsed_call(fn: Callable[[], object], bound: float) -> tuple[BaseException | None, float]:
  """Runs `fn` in a thread; (what it raised, seconds it took). Fails the test
  if it has not returned within `bound` seconds."""
  start = time.monotonic()
  outcome = in_thread(fn)
  error = outcome.exception(bound)  # TimeoutError here: the call hung past its deadline
  return error, time.monotonic() - start


class FakeServer:
  """A listener whose every connection is handled by `behave(conn)` in a thread."""

  def __init__(self, behave: Callable[[socket.socket], None]):
    self._listener = socket.create_server(("127.0.0.1", 0))
    self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
    self._behave = behave
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        conn, _ = self._listener.accept()
      except OSError:
        return
      threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

  def _serve(self, conn: socket.socket) -> None:
    with conn:
      try:
        self._behave(conn)
      except OSError:
        pass  # the client went away

  def close(self) -> None:
    self._listener.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], FakeServer]]:
  servers = []

  def start(behave):
    servers.append(FakeServer(behave))
    return servers[-1]

  yield start
  for server in servers:
    server.close()


def dribble(sock: socket.socket, data: bytes) -> bool:
  """Sends `data` one byte per DRIBBLE_SECONDS; True as soon as the peer closes."""
  poller = select.poll()
  poller.register(sock, select.POLLIN)
  for i in range(len(data)):
    try:
      sock.sendall(data[i : i + 1])
    except OSError:
      return True
    if poller.poll(DRIBBLE_SECONDS * 1000):
      try:
        if not sock.recv(65536):
          return True
      except OSError:
        return True
  return False


def wait_closed(sock: socket.socket) -> None:
  """Returns once the peer closed `sock` (bounded by TIMEOUT + MARGIN),
  without reading what it sent."""
  poller = select.poll()
  poller.register(sock, select.POLLRDHUP)
  poller.poll((TIMEOUT + MARGIN) * 1000)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
  data = b""
  while len(data) < n:
    chunk = sock.recv(n - len(data))
    assert chunk, f"connection closed after {len(data)} of {n} bytes"
    data += chunk
  return data


def serve_handshake(conn: socket.socket, secret: bytes, reply: bool = True) -> None:
  """Passes the handshake as a server knowing `secret`; with `reply`, reads
  one request and echoes its first argument."""
  assert protocol.server_handshake(conn, secret, Deadline(TIMEOUT, "the fake server's handshake"))
  if reply:
    request = protocol.FrameReader(conn).read(Deadline(TIMEOUT, "the fake server's read"))
    _, args, _ = serialization.loads(request.payload, request.buffers)
    payload, _ = serialization.dumps(args[0])
    protocol.send_frame(conn, protocol.REPLY, 0, request.call_id, payload, [])


def check_timeout_error(error: BaseException | None, *phrases: str) -> None:
  assert isinstance(error, errors.CallTimeoutError), repr(error)
  for phrase in phrases:
    assert phrase in str(error), str(error)


# --- the server's handshake deadline ------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> TlsConfig:
  return TlsConfig.generate()


@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "tls"])
def test_server_cuts_off_a_peer_that_dribbles_its_handshake(with_tls, tls):
  handshake_timeout = 1.0
  secret = os.urandom(32)
  server = Server(
    Service(),
    secret=secret,
    label="gate[0]",
    tls=tls if with_tls else None,
    handshake_timeout=handshake_timeout,
  )
  server.start()
  try:
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
      start = time.monotonic()
      if with_tls:  # a TLS record header announcing 512 bytes that come slowly
        data = b"\x16\x03\x01\x02\x00" + bytes(512)
      else:  # a wrong proof and a nonce, after the server's greeting
        greeting = recv_exactly(sock, len(protocol.MAGIC) + protocol.NONCE_SIZE)
        assert greeting.startswith(protocol.MAGIC)
        data = bytes(protocol.PROOF_SIZE + protocol.NONCE_SIZE)
      # At one byte per DRIBBLE_SECONDS the data alone would take this long:
      assert len(data) * DRIBBLE_SECONDS > handshake_timeout + MARGIN
      assert dribble(sock, data), "the server never closed the dribbling connection"
      assert time.monotonic() - start < handshake_timeout + MARGIN
    # Serving goes on.
    client = Client(
      server.address, secret=secret, label="gate[0]", timeout=TIMEOUT, tls=tls if with_tls else None
    )
    assert client.echo("after") == "after"
    client.close()
  finally:
    server.stop()


def test_server_rejects_a_bad_handshake_timeout():
  with pytest.raises(ValueError, match=r"handshake_timeout of the server of node gate\[0\]"):
    Server(Service(), secret=b"s", label="gate[0]", handshake_timeout=-1)


# --- a client's deadline against peers that stall ------------------------------------


@pytest.mark.parametrize("futures", [False, True], ids=["sync", "future"])
def test_call_against_a_dribbled_greeting_times_out(fake_server, futures):
  greeting = protocol.MAGIC + os.urandom(protocol.NONCE_SIZE)
  assert len(greeting) * DRIBBLE_SECONDS > 1.0 + MARGIN
  server = fake_server(lambda conn: dribble(conn, greeting))
  client = Client(server.address, secret=b"s", label="drip[0]", timeout=1.0)
  if futures:
    error, took = elapsed_call(lambda: client.futures.echo(1).result(TIMEOUT), 1.0 + MARGIN)
    check_timeout_error(error, "call drip[0].echo", "1 s timeout")
  else:
    error, took = elapsed_call(lambda: client.echo(1), 1.0 + MARGIN)
    check_timeout_error(error, "call drip[0].echo", "1 s timeout", "handshake", server.address)
  assert took < 1.0 + MARGIN
  client.close()


@pytest.mark.parametrize("peer", ["stops", "dribbles"])
def test_call_against_a_peer_that_stalls_mid_reply_times_out(fake_server, peer):
  secret = os.urandom(32)
  header = protocol.HEADER.pack(protocol.REPLY, 0, 0, 1, 1 << 20)

  def behave(conn: socket.socket) -> None:
    serve_handshake(conn, secret, reply=False)
    protocol.FrameReader(conn).read(Deadline(TIMEOUT, "the fake server's read"))
    conn.sendall(header + bytes(100))  # a reply of 1 MiB begins
    if peer == "dribbles":
      dribble(conn, bytes(100))
    else:
      wait_closed(conn)

  client = Client(fake_server(behave).address, secret=secret, label="stall[0]", timeout=1.0)
  error, took = elapsed_call(lambda: client.echo(1), 1.0 + MARGIN)
  check_timeout_error(error, "call stall[0].echo", "the reply had begun to arrive, then stopped")
  assert took < 1.0 + MARGIN
  client.close()


@pytest.mark.parametrize("connected", [False, True], ids=["connecting", "connected"])
@pytest.mark.parametrize("futures", [False, True], ids=["sync", "future"])
def test_sending_to_a_peer_that_does_not_read_times_out(fake_server, futures, connected):
  """A request far larger than the socket buffers, to a peer that reads no
  more: sent while the connection is being made, or on one already up."""
  secret = os.urandom(32)

  def behave(conn: socket.socket) -> None:
    serve_handshake(conn, secret, reply=connected)  # answers a first call
    wait_closed(conn)  # then reads nothing

  client = Client(fake_server(behave).address, secret=secret, label="deaf[0]", timeout=1.0)
  patient = client.with_timeout(TIMEOUT + MARGIN)
  big = np.zeros(64 << 20, np.uint8)
  if futures:
    if connected:  # a first call opens the futures' connection
      assert patient.futures.echo("first").result(TIMEOUT) == "first"
    small = patient.futures.echo("small")  # in flight on the same connection
    error, took = elapsed_call(
      lambda: client.futures.echo(big).result(TIMEOUT + MARGIN), 1 + MARGIN
    )
    # The connection was cut mid-request, so the other future fails too, and says why.
    lost = small.exception(TIMEOUT + MARGIN)
    assert isinstance(lost, errors.ConnectionLostError), repr(lost)
    assert "could not be sent within its timeout" in str(lost) and "deaf[0]" in str(lost)
  else:

    def call_big():
      if connected:  # a first call opens this thread's connection
        assert patient.echo("first") == "first"
      client.echo(big)

    error, took = elapsed_call(call_big, 1.0 + MARGIN)
  check_timeout_error(error, "call deaf[0].echo", "sending the request")
  assert took < 1.0 + MARGIN
  client.close()


SENDMSG = {"x86_64": "46", "aarch64": "211"}.get(platform.machine())


def sending(pid: int) -> bool:
  """True if a thread of process `pid` is inside sendmsg (a courier reply with buffers)."""
  for path in glob.glob(f"/proc/{pid}/task/*/syscall"):
    try:
      with open(path) as f:
        if f.read().split(" ", 1)[0] == SENDMSG:
          return True
    except OSError:
      continue  # the thread ended
  return False


@pytest.mark.skipif(SENDMSG is None, reason="sendmsg's number on this architecture is not known")
def test_call_to_a_server_stopped_in_the_middle_of_a_large_reply_times_out(fresh_child_server):
  """The server process is SIGSTOPped while it sends a 128 MiB reply."""
  child = fresh_child_server
  addresses = child.addresses
  timeout = 8.0  # much longer than the call takes when the server runs
  big = np.zeros(128 << 20, np.uint8)
  for _ in range(5):  # the reply may finish before it is seen being sent
    # Over TCP: over the Unix socket a reply this large is shared memory, not sendmsg.
    client = Client(
      pick(addresses, "tcp"), secret=addresses.secret, label=CHILD_LABEL, timeout=timeout
    )
    outcome = in_thread(client.echo, big)
    seen = False
    while not outcome.done() and not (seen := sending(child.process.pid)):
      time.sleep(0.001)  # the reply takes far longer than this to send
    if not seen:
      client.close()
      continue
    os.kill(child.process.pid, signal.SIGSTOP)
    try:
      error = outcome.exception(timeout + MARGIN)
    finally:
      os.kill(child.process.pid, signal.SIGCONT)
    client.close()
    if error is None:
      continue  # the whole reply was already in the socket's buffers
    check_timeout_error(error, f"call {CHILD_LABEL}.echo", "the reply had begun to arrive")
    return
  pytest.fail("the server was never caught sending its reply")


def test_a_future_waiting_for_the_connection_keeps_its_own_deadline():
  """The connection is attempted for as long as some future waiting for it
  has time left, not only for the first future's timeout."""
  port = free_port()
  secret = os.urandom(32)
  client = Client(f"127.0.0.1:{port}", secret=secret, label="late[0]", timeout=0.5)
  hasty = client.futures.echo("hasty")
  patient = client.with_timeout(TIMEOUT + MARGIN).futures.echo("patient")
  check_timeout_error(hasty.exception(TIMEOUT), "call late[0].echo")
  assert not patient.done()
  server = Server(Service(), secret=secret, label="late[0]", port=port)
  server.start()
  try:
    assert patient.result(TIMEOUT + MARGIN) == "patient"
  finally:
    client.close()
    server.stop()


def test_futures_of_two_timeouts_on_one_connection_each_fail_at_their_own_deadline(local_server):
  """Calls of one timeout expire in the order they were made (one queue per
  timeout): a short call made after a long one is not held behind it."""
  client = local_server.client(timeout=TIMEOUT)
  assert client.futures.echo("connected").result(TIMEOUT) == "connected"
  long, short = 3.0, 0.3
  start = time.monotonic()
  slow = client.with_timeout(long).futures.block("long", TIMEOUT + MARGIN)
  quick = client.with_timeout(short).futures.block("short", TIMEOUT + MARGIN)
  check_timeout_error(quick.exception(TIMEOUT), "call local_svc.block")
  assert time.monotonic() - start >= short
  assert not slow.done()  # its deadline is 2.7 s later
  check_timeout_error(slow.exception(long + MARGIN), "call local_svc.block")
  assert time.monotonic() - start >= long
  local_server.service.release_all()
  assert client.futures.echo("serves on").result(TIMEOUT) == "serves on"


def test_a_timeout_whose_calls_all_ended_still_fails_its_next_call(local_server):
  """After its queue of deadlines empties (calls answered or expired), a
  later call of the same timeout is watched again, behind many answered ones."""
  client = local_server.client(timeout=0.3)
  assert [f.result(TIMEOUT) for f in [client.futures.echo(i) for i in range(1000)]] == list(
    range(1000)
  )
  for name in ("first", "second"):
    start = time.monotonic()
    future = client.futures.block(name, TIMEOUT + MARGIN)
    check_timeout_error(future.exception(TIMEOUT), "call local_svc.block")
    assert time.monotonic() - start >= 0.3
  local_server.service.release_all()


def test_futures_of_many_timeouts_each_fail_at_their_own_deadline(local_server):
  """Past the timeouts a connection keeps queues for, calls are watched one by one."""
  client = local_server.client(timeout=TIMEOUT)
  assert client.futures.echo("connected").result(TIMEOUT) == "connected"
  timeouts = [0.3 + i / 1000 for i in range(80)]  # more than MAX_DEADLINE_QUEUES
  start = time.monotonic()
  futures = [client.with_timeout(t).futures.block(f"b{t}", TIMEOUT + MARGIN) for t in timeouts]
  for future in futures:
    check_timeout_error(future.exception(TIMEOUT + MARGIN), "call local_svc.block")
  assert time.monotonic() - start >= max(timeouts)
  local_server.service.release_all()


# --- timeout=0 and bad timeouts ------------------------------------------------------


def test_timeout_zero_fails_at_once_without_sending(local_server):
  client = local_server.client(timeout=None)
  assert client.echo("warm") == "warm"  # this thread's connection is up
  assert client.futures.echo("warm").result(TIMEOUT) == "warm"
  now = client.with_timeout(0)
  calls = local_server.server.calls
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError, match=r"call local_svc\.echo .*not sent"):
    now.echo(1)
  future = now.futures.echo(2)
  assert future.done(), "a future of timeout 0 fails when it is submitted"
  assert isinstance(future.exception(0), errors.CallTimeoutError)
  assert time.monotonic() - start < MARGIN
  # Had either been sent, the server would have counted it before these,
  # which come after them on the same connections.
  assert client.echo(3) == 3
  assert client.futures.echo(4).result(TIMEOUT) == 4
  assert local_server.server.calls == calls + 2


def test_timeout_zero_does_not_connect(local_server):
  client = local_server.client(timeout=0)
  with pytest.raises(errors.CallTimeoutError, match="not sent"):
    client.echo(1)
  assert local_server.server.connections() == []


@pytest.mark.parametrize(
  "timeout,error", [(-1, ValueError), (float("nan"), ValueError), ("5", TypeError)]
)
def test_bad_timeouts_are_refused_naming_the_node(local_server, timeout, error):
  with pytest.raises(error, match=r"timeout of the courier client of node local_svc.*seconds"):
    local_server.client(timeout=timeout)
  with pytest.raises(error, match="local_svc"):
    local_server.client().with_timeout(timeout)


# --- the accept loop under a flood -----------------------------------------------------


def serve_with_few_descriptors(pipe, secret: bytes, spare: int) -> None:
  """Child process: a server that may open only `spare` more descriptors."""
  server = Server(Service(), secret=secret, label="crowded[0]", handshake_timeout=120)
  server.start()
  limit_descriptors(spare)
  pipe.send((server.address, server.local_address))
  try:
    while pipe.recv() == "shed":
      pipe.send(server.shed)
  except EOFError:
    pass


@pytest.fixture
def crowded_server() -> Iterator[tuple[str, str, bytes, object]]:
  secret = os.urandom(32)
  with crowded_child(serve_with_few_descriptors, secret, 40, timeout=60, what="crowded server") as (
    pipe,
    _,
  ):
    address, local_address = pipe.recv()
    yield address, local_address, secret, pipe


def test_accept_loop_survives_running_out_of_descriptors(crowded_server):
  address, local_address, secret, pipe = crowded_server
  host, port = address.rsplit(":", 1)
  flood = []
  try:
    for _ in range(300):  # idle connections, many more than the server has descriptors for
      flood.append(socket.create_connection((host, int(port)), timeout=TIMEOUT))
    for where in (address, local_address):
      client = Client(where, secret=secret, label="crowded[0]", timeout=60)
      assert client.echo("served") == "served"
      client.close()
    pipe.send("shed")
    assert pipe.poll(TIMEOUT)
    assert pipe.recv() > 0, "the flood never exhausted the server's descriptors"
  finally:
    for sock in flood:
      sock.close()


# --- Client.close ----------------------------------------------------------------------


def open_connections(port: int) -> int:
  """This process's TCP connections to `port` that are still open."""
  return sum(
    1
    for c in psutil.Process().net_connections(kind="tcp")
    if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
  )


def wait_for(condition: Callable[[], bool], what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert time.monotonic() < deadline, what
    time.sleep(0.01)


def test_close_from_another_thread_closes_every_threads_connection(fresh_child_server):
  addresses = fresh_child_server.addresses  # no other test's clients connect to it
  port = int(addresses.address.rsplit(":", 1)[1])
  client = Client(addresses.address, secret=addresses.secret, label=CHILD_LABEL, timeout=None)
  control = Client(addresses.address, secret=addresses.secret, label=CHILD_LABEL, timeout=TIMEOUT)
  control.echo("control")  # one connection of its own, which stays open
  name = f"close-{os.urandom(4).hex()}"
  called, finish = threading.Barrier(5), threading.Event()

  def idle_thread(i: int):
    assert client.echo(i) == i
    called.wait(TIMEOUT)
    finish.wait(TIMEOUT)
    return client.echo("after close")  # raises: the client is closed

  idle = [in_thread(idle_thread, i) for i in range(4)]
  busy = in_thread(client.block, name)  # in a call when the client closes
  assert client.futures.echo("f").result(TIMEOUT) == "f"
  called.wait(TIMEOUT)
  assert control.wait_started(name)
  assert open_connections(port) == 1 + 4 + 1 + 1  # control, idle threads, busy thread, futures

  in_thread(client.close).result(TIMEOUT)  # neither the main thread nor a calling one
  assert isinstance(busy.exception(TIMEOUT), errors.ClientClosedError)
  wait_for(lambda: open_connections(port) == 1, "the client's connections stay open")
  finish.set()
  for outcome in idle:
    error = outcome.exception(TIMEOUT)
    assert isinstance(error, errors.ClientClosedError), repr(error)
    assert CHILD_LABEL in str(error) and "closed" in str(error)
  control.release(name)
  control.close()


def test_a_threads_connection_closes_when_the_thread_ends(fresh_child_server):
  addresses = fresh_child_server.addresses
  port = int(addresses.address.rsplit(":", 1)[1])
  client = Client(addresses.address, secret=addresses.secret, label=CHILD_LABEL, timeout=TIMEOUT)
  assert client.echo(1) == 1
  assert in_thread(client.echo, 2).result(TIMEOUT) == 2
  wait_for(lambda: open_connections(port) == 1, "an ended thread's connection stays open")
  client.close()
  assert open_connections(port) == 0

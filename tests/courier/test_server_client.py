"""courier Server and Client: calls, errors, timeouts, stops, security and concurrency."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import socket
import threading
import time

import pytest

from launchpad import errors
from launchpad.courier import protocol, serialization, shared_memory
from launchpad.courier.client import Client, StaticAddress
from launchpad.courier.server import Server
from launchpad.timeouts import Deadline

from .conftest import (
  CHILD_LABEL,
  SERVER_ONLY_MODULE,
  TIMEOUT,
  Service,
  free_port,
  in_thread,
  pick,
)


def child_client(addresses, transport, timeout=TIMEOUT, **kwargs) -> Client:
  return Client(
    pick(addresses, transport),
    secret=addresses.secret,
    label=CHILD_LABEL,
    timeout=timeout,
    **kwargs,
  )


# --- calls -------------------------------------------------------------------


def test_sync_calls_in_process(local_server, transport):
  client = local_server.client(transport)
  assert client.echo("hello") == "hello"
  assert client.add(2, 3) == 5
  assert client.add(2, b=40) == 42
  assert client.kwargs(1, 2, a=3, b={"c": [4]}) == ((1, 2), {"a": 3, "b": {"c": [4]}})
  assert client.pid() == os.getpid()


def test_futures_in_process(local_server, transport):
  client = local_server.client(transport)
  future = client.futures.add(40, b=2)
  assert isinstance(future, concurrent.futures.Future)
  assert future.result(TIMEOUT) == 42
  assert client.futures.kwargs(x=1).result(TIMEOUT) == ((), {"x": 1})


def test_call_of_a_callable_object_in_process(local_server, transport):
  client = local_server.client(transport)
  assert client(3) == ("called", 3)
  assert client(3, scale=2) == ("called", 6)
  future = client.futures(5, scale=3)
  assert isinstance(future, concurrent.futures.Future)
  assert future.result(TIMEOUT) == ("called", 15)


def test_sync_calls_across_processes(child_process_server, transport):
  client = child_client(child_process_server.addresses, transport)
  assert client.pid() == child_process_server.process.pid != os.getpid()
  assert client.echo([1, "two", 3.0]) == [1, "two", 3.0]
  assert client.add("a", b="b") == "ab"
  assert client.kwargs(1, key=(2, 3)) == ((1,), {"key": (2, 3)})


def test_futures_across_processes(child_server, transport):
  client = child_client(child_server, transport)
  futures = [client.futures.add(i, b=i) for i in range(10)]
  assert all(isinstance(f, concurrent.futures.Future) for f in futures)
  assert [f.result(TIMEOUT) for f in futures] == [2 * i for i in range(10)]


def test_call_of_a_callable_object_across_processes(child_server, transport):
  client = child_client(child_server, transport)
  assert client(7, scale=3) == ("called", 21)
  assert client.futures(7).result(TIMEOUT) == ("called", 7)


def test_ipv6_loopback():
  if not socket.has_ipv6:
    pytest.skip("no IPv6 support")
  try:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
      probe.bind(("::1", 0))
  except OSError:
    pytest.skip("no IPv6 loopback")
  secret = os.urandom(16)
  server = Server(Service(), secret=secret, label="v6", host="::1")
  address = server.start()
  try:
    assert address.startswith("[::1]:")
    client = Client(address, secret=secret, label="v6", timeout=TIMEOUT)
    assert client.echo("six") == "six"
    assert client.futures.add(1, 2).result(TIMEOUT) == 3
  finally:
    server.stop()


def test_calls_after_close_raise_client_closed_naming_the_node(local_server):
  client = local_server.client()
  assert client.echo(1) == 1
  assert client.futures.echo(2).result(TIMEOUT) == 2
  view = client.with_timeout(1.0)
  client.close()
  for call in (lambda: client.echo(3), lambda: view.echo(3), lambda: client.futures.echo(4)):
    with pytest.raises(errors.ClientClosedError, match=r"local_svc.*make a new client"):
      call()
  client.close()  # closing again is harmless
  assert local_server.client().echo(5) == 5


def test_client_cannot_be_pickled(local_server):
  client = local_server.client()
  with pytest.raises(errors.SerializationError):
    pickle.dumps(client)
  with pytest.raises(errors.SerializationError):
    client.echo(client)


# --- remote exceptions ---------------------------------------------------------


def _check_rebuilt_key_error(error: BaseException, label: str) -> None:
  assert type(error) is KeyError
  assert error.args == ("missing",)
  assert any(label in note for note in getattr(error, "__notes__", []))
  cause = error.__cause__
  assert isinstance(cause, errors.RemoteTraceback)
  assert cause.node == label
  assert "raise_key_error" in cause.text
  assert "raise_key_error" in str(cause)


def test_remote_key_error_in_process(local_server):
  client = local_server.client()
  with pytest.raises(KeyError) as info:
    client.raise_key_error("missing")
  _check_rebuilt_key_error(info.value, "local_svc")
  error = client.futures.raise_key_error("missing").exception(TIMEOUT)
  _check_rebuilt_key_error(error, "local_svc")


def test_remote_key_error_across_processes(child_server, transport):
  client = child_client(child_server, transport)
  with pytest.raises(KeyError) as info:
    client.raise_key_error("missing")
  _check_rebuilt_key_error(info.value, CHILD_LABEL)
  error = client.futures.raise_key_error("missing").exception(TIMEOUT)
  _check_rebuilt_key_error(error, CHILD_LABEL)
  assert client.echo("still works") == "still works"


def test_exception_that_cannot_be_unpickled_arrives_as_remote_error(local_server):
  client = local_server.client()
  for call in (client.raise_bad_init, lambda: client.futures.raise_bad_init().result(TIMEOUT)):
    with pytest.raises(errors.RemoteError) as info:
      call()
    error = info.value
    assert error.node == "local_svc"
    assert error.type_name.endswith("BadInitError")
    assert "1/2" in str(error)
    assert "raise_bad_init" in error.remote_traceback


def test_exception_type_known_only_to_the_server_arrives_as_remote_error(child_server):
  client = child_client(child_server, "unix")
  with pytest.raises(ModuleNotFoundError):
    __import__(SERVER_ONLY_MODULE)
  with pytest.raises(errors.RemoteError) as info:
    client.raise_server_only()
  error = info.value
  assert error.node == CHILD_LABEL
  assert error.type_name == f"{SERVER_ONLY_MODULE}.ServerOnlyError"
  assert "only the server knows this type" in str(error)
  assert "raise_server_only" in error.remote_traceback
  error = client.futures.raise_server_only().exception(TIMEOUT)
  assert isinstance(error, errors.RemoteError)
  assert error.type_name == f"{SERVER_ONLY_MODULE}.ServerOnlyError"


def test_exception_carrying_a_numpy_array_keeps_its_type(child_server):
  # The exception pickles fine and its type exists on both sides, so it
  # should be rebuilt as a ValueError like any other.
  client = child_client(child_server, "unix")
  with pytest.raises(ValueError) as info:
    client.raise_with_array()
  assert info.value.args[0] == "bad values"
  assert list(info.value.args[1]) == [0, 1, 2]


# --- unknown and private methods -------------------------------------------------


def test_unknown_method_names_it_and_lists_available_methods(child_server, transport):
  client = child_client(child_server, transport)
  with pytest.raises(AttributeError) as info:
    client.no_such_method(1)
  message = str(info.value)
  assert "no_such_method" in message
  for name in ("echo", "add", "raise_key_error", "__call__"):
    assert name in message
  error = client.futures.no_such_method().exception(TIMEOUT)
  assert isinstance(error, AttributeError)
  assert "no_such_method" in str(error)


def test_private_methods_are_not_callable_remotely(local_server):
  client = local_server.client()
  assert local_server.service._private() == "private"
  for call in (client._private, lambda: client.futures._private().result(TIMEOUT)):
    with pytest.raises(AttributeError) as info:
      call()
    message = str(info.value)
    assert "_private" in message
    available = message.split("available methods:")[1]
    assert "_private" not in available
    assert "_event" not in available
    assert "echo" in available


# --- timeouts -------------------------------------------------------------------


def test_sync_call_timeout(local_server, transport):
  client = local_server.client(transport, timeout=0.2)
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError) as info:
    client.block("slow")
  assert time.monotonic() - start < 1.5
  assert "block" in str(info.value)
  assert "local_svc" in str(info.value)
  assert local_server.service.wait_started("slow")
  # The server is still stuck in the first call; the client works anyway.
  assert client.echo("next") == "next"
  local_server.service.release("slow")
  assert client.echo("after release") == "after release"


def test_sync_call_timeout_across_processes(child_server, transport):
  name = f"slow-{transport}-{os.urandom(4).hex()}"
  client = child_client(child_server, transport, timeout=0.2)
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError):
    client.block(name)
  assert time.monotonic() - start < 1.5
  assert client.echo(1) == 1
  client.release(name)


def test_future_timeout(local_server, transport):
  client = local_server.client(transport, timeout=0.2)
  start = time.monotonic()
  future = client.futures.block("slow")
  error = future.exception(TIMEOUT)
  assert time.monotonic() - start < 1.5
  assert isinstance(error, errors.CallTimeoutError)
  assert "block" in str(error)
  # The client still serves; with time to connect again, should the
  # timeout have come while its first connection was still being made.
  patient = client.with_timeout(TIMEOUT)
  assert patient.futures.echo("next").result(TIMEOUT) == "next"
  assert patient.echo("sync too") == "sync too"
  local_server.service.release("slow")


def test_with_timeout_view(local_server):
  client = local_server.client(timeout=None)
  quick = client.with_timeout(0.2)
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError):
    quick.block("a")
  assert isinstance(quick.futures.block("b").exception(TIMEOUT), errors.CallTimeoutError)
  assert time.monotonic() - start < 3.0
  # The original client keeps its own (unlimited) timeout.
  future = client.futures.block("c")
  assert local_server.service.wait_started("c")
  local_server.service.release("c")
  assert future.result(TIMEOUT) is True
  # And a patient view of an impatient client waits.
  impatient = local_server.client(timeout=0.05)
  assert impatient.with_timeout(TIMEOUT).sleep(0.3) == 0.3
  assert quick.echo(1) == 1


# --- waiting for a server ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix-abstract", "unix-path"])
def test_no_server_and_no_timeout_raises_call_timeout_naming_the_address(kind, tmp_path):
  address = {
    "tcp": lambda: f"127.0.0.1:{free_port()}",
    "unix-abstract": lambda: f"unix:@launchpad-test-nothing-{os.urandom(6).hex()}",
    "unix-path": lambda: f"unix:{tmp_path / 'nothing.sock'}",
  }[kind]()
  client = Client(address, secret=b"s", label="ghost", timeout=None)
  start = time.monotonic()
  # Nothing will ever listen there: the call fails at once instead of waiting.
  error = in_thread(client.echo, 1).exception(TIMEOUT)
  assert isinstance(error, errors.CallTimeoutError), repr(error)
  assert address in str(error)
  assert "ghost" in str(error)
  assert time.monotonic() - start < 5
  error = in_thread(lambda: client.futures.echo(1).result(TIMEOUT)).exception(TIMEOUT)
  assert isinstance(error, errors.CallTimeoutError), repr(error)


def test_no_server_with_timeout_retries_until_the_deadline():
  address = f"127.0.0.1:{free_port()}"
  client = Client(address, secret=b"s", label="ghost", timeout=1.0)
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError) as info:
    client.echo(1)
  elapsed = time.monotonic() - start
  assert address in str(info.value)
  assert 0.8 <= elapsed < 2.5


class _WatchedAddress:
  """A static address that reports when the client found nobody listening."""

  def __init__(self, address: str, waits: bool):
    self._static = StaticAddress(address)
    self.waits = waits
    self.refused = threading.Event()

  def resolve(self, timeout):
    return self._static.resolve(timeout)

  def forget(self):
    self.refused.set()


@pytest.mark.parametrize("waits,timeout", [(False, TIMEOUT), (True, None)])
def test_client_retries_until_the_server_comes_up(waits, timeout):
  port = free_port()
  secret = os.urandom(16)
  resolver = _WatchedAddress(f"127.0.0.1:{port}", waits=waits)
  client = Client(resolver, secret=secret, label="late", timeout=timeout)
  result = in_thread(client.echo, "finally")
  assert resolver.refused.wait(TIMEOUT)  # the first attempt found no server
  assert not result.done()
  server = Server(Service(), secret=secret, label="late", port=port)
  server.start()
  try:
    assert result.result(TIMEOUT) == "finally"
  finally:
    server.stop()


# --- server stop ------------------------------------------------------------------


def test_stop_fails_calls_in_flight(local_server, transport):
  client = local_server.client(transport, timeout=None)
  sync_call = in_thread(client.block, "sync")
  pending = [client.futures.block("f1"), client.futures.block("f2")]
  for name in ("sync", "f1", "f2"):
    assert local_server.service.wait_started(name)
  local_server.server.stop()
  for future in [sync_call, *pending]:
    error = future.exception(TIMEOUT)
    assert isinstance(error, errors.ConnectionLostError), repr(error)
    assert "local_svc" in str(error)
  with pytest.raises(errors.CallTimeoutError):
    local_server.client(transport, timeout=0.2).echo(1)


def test_killed_server_process_fails_calls_in_flight(fresh_child_server, transport):
  addresses = fresh_child_server.addresses
  client = child_client(addresses, transport, timeout=None)
  control = child_client(addresses, transport)
  sync_call = in_thread(client.block, "sync")
  pending = client.futures.block("future")
  assert control.wait_started("sync")
  assert control.wait_started("future")
  fresh_child_server.kill()
  for future in (sync_call, pending):
    error = future.exception(TIMEOUT)
    assert isinstance(error, errors.ConnectionLostError), repr(error)
    assert CHILD_LABEL in str(error)
  with pytest.raises(errors.CallTimeoutError):
    child_client(addresses, transport, timeout=0.2).echo(1)


# --- security -----------------------------------------------------------------------


def _connect_raw(address: str) -> socket.socket:
  family, sockaddr = protocol.socket_address(address)
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.settimeout(TIMEOUT)
  sock.connect(sockaddr)
  return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
  data = b""
  while len(data) < n:
    chunk = sock.recv(n - len(data))
    assert chunk, f"connection closed after {len(data)} of {n} bytes"
    data += chunk
  return data


def _recv_until_closed(sock: socket.socket) -> bytes:
  data = b""
  try:
    while chunk := sock.recv(65536):
      data += chunk
  except ConnectionResetError:
    pass  # closed with our unread bytes in its buffer: TCP resets
  return data


def test_wrong_proof_is_refused_and_connection_closed(child_server, transport):
  with _connect_raw(pick(child_server, transport)) as sock:
    greeting = _recv_exactly(sock, len(protocol.MAGIC) + protocol.NONCE_SIZE)
    assert greeting.startswith(protocol.MAGIC)
    nonce = greeting[len(protocol.MAGIC) :]
    client_nonce = os.urandom(protocol.NONCE_SIZE)
    sock.sendall(protocol.proof(b"not the secret", nonce, b"client") + client_nonce)
    assert _recv_exactly(sock, 1) == protocol.AUTH_REFUSED
    assert _recv_until_closed(sock) == b""


def test_right_proof_is_accepted_and_frames_are_served(child_server, transport):
  with _connect_raw(pick(child_server, transport)) as sock:
    greeting = _recv_exactly(sock, len(protocol.MAGIC) + protocol.NONCE_SIZE)
    client_nonce = os.urandom(protocol.NONCE_SIZE)
    server_nonce = greeting[len(protocol.MAGIC) :]
    sock.sendall(protocol.proof(child_server.secret, server_nonce, b"client") + client_nonce)
    assert _recv_exactly(sock, 1) == protocol.AUTH_OK
    # The server proves it knows the secret too.
    server_proof = _recv_exactly(sock, protocol.PROOF_SIZE)
    assert server_proof == protocol.proof(child_server.secret, client_nonce, b"server")
    # On a Unix socket the client then hands the server its shared-memory channel.
    shared_memory.offer(sock, Deadline(TIMEOUT, "offering the channel"))
    payload, buffers = serialization.dumps(("add", (20, 22), {}))
    protocol.send_frame(sock, protocol.REQUEST, 0, 77, payload, buffers)
    frame = protocol.FrameReader(sock).read(deadline=Deadline(TIMEOUT, "reading the reply"))
    assert (frame.kind, frame.call_id) == (protocol.REPLY, 77)
    assert serialization.loads(frame.payload, frame.buffers) == 42


class _CreatesFile:
  """Unpickling this creates (truncates) a file: proof that a pickle was loaded."""

  def __init__(self, path: str):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_frames_before_the_handshake_are_never_unpickled(child_server, transport, tmp_path):
  marker = tmp_path / f"unpickled-{transport}"
  payload = pickle.dumps(("echo", (_CreatesFile(str(marker)),), {}), protocol=5)
  frame = protocol.HEADER.pack(protocol.REQUEST, 0, 0, 1, len(payload)) + payload
  assert len(frame) > protocol.PROOF_SIZE + protocol.NONCE_SIZE
  with _connect_raw(pick(child_server, transport)) as sock:
    sock.sendall(frame + frame)  # skips the handshake entirely
    data = _recv_until_closed(sock)
  assert data.startswith(protocol.MAGIC)
  if len(data) > len(protocol.MAGIC) + protocol.NONCE_SIZE:
    assert data[len(protocol.MAGIC) + protocol.NONCE_SIZE :] == protocol.AUTH_REFUSED
  # The server closed the connection, so it is done with what we sent.
  assert child_client(child_server, transport).echo("alive") == "alive"
  assert not marker.exists()
  # The payload is a working exploit: loading it does create the marker.
  pickle.loads(payload)[1][0].close()
  assert marker.exists()


def test_client_refuses_a_server_that_does_not_know_the_secret(tmp_path):
  """A process that took a node's address cannot make the client unpickle."""
  marker = tmp_path / "unpickled-by-client"
  payload = pickle.dumps(_CreatesFile(str(marker)), protocol=5)
  listener = socket.create_server(("127.0.0.1", 0))

  def impostor():
    conn, _ = listener.accept()
    with conn:
      conn.sendall(protocol.MAGIC + os.urandom(protocol.NONCE_SIZE))
      _recv_exactly(conn, protocol.PROOF_SIZE + protocol.NONCE_SIZE)
      # Claims success, fakes the proof, then sends a reply to call 1.
      conn.sendall(protocol.AUTH_OK + os.urandom(protocol.PROOF_SIZE))
      protocol.send_frame(conn, protocol.REPLY, 0, 1, payload, [])
      _recv_until_closed(conn)

  thread = threading.Thread(target=impostor, daemon=True)
  thread.start()
  address = f"127.0.0.1:{listener.getsockname()[1]}"
  client = Client(address, secret=b"the secret", label="victim[0]", timeout=TIMEOUT)
  with pytest.raises(errors.AuthenticationError, match="does not know the program secret"):
    client.echo(1)
  client.close()
  thread.join(TIMEOUT)
  listener.close()
  assert not marker.exists()


def test_client_with_wrong_secret_raises_authentication_error(child_server, transport):
  client = Client(pick(child_server, transport), secret=b"wrong", label="x", timeout=TIMEOUT)
  with pytest.raises(errors.AuthenticationError):
    client.echo(1)
  with pytest.raises(errors.AuthenticationError):
    client.futures.echo(1).result(TIMEOUT)


# --- concurrency ------------------------------------------------------------------------


def test_many_threads_share_one_client(child_server, transport):
  client = child_client(child_server, transport)

  def work(thread: int) -> list[int]:
    return [client.add(thread * 1000, i) for i in range(200)]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(work, range(8), timeout=60))
  assert results == [[t * 1000 + i for i in range(200)] for t in range(8)]


def test_sync_calls_of_different_threads_run_side_by_side(local_server):
  client = local_server.client()
  waiting = [in_thread(client.wait_for, "go") for _ in range(3)]
  assert client.echo("not blocked") == "not blocked"
  client.release("go")
  assert [f.result(TIMEOUT) for f in waiting] == [True] * 3


@pytest.mark.parametrize("where", ["in_process", "child"])
def test_2000_pipelined_futures(where, local_server, child_server):
  if where == "in_process":
    client = local_server.client("unix")
  else:
    client = child_client(child_server, "unix")
  futures = [client.futures.add(i, b=1) for i in range(2000)]
  _, not_done = concurrent.futures.wait(futures, timeout=60)
  assert not not_done
  assert [f.result(0) for f in futures] == [i + 1 for i in range(2000)]


def test_future_waiting_for_a_later_future_does_not_deadlock(child_server, transport):
  name = f"go-{transport}-{os.urandom(4).hex()}"
  client = child_client(child_server, transport)
  waiting = client.futures.wait_for(name, 5)
  releasing = client.futures.release(name)
  assert releasing.result(TIMEOUT) is None
  assert waiting.result(TIMEOUT) is True


def test_many_futures_waiting_for_a_later_one_do_not_deadlock(local_server):
  client = local_server.client()
  waiting = [client.futures.wait_for("all", 5) for _ in range(20)]
  client.futures.release("all")
  assert [f.result(TIMEOUT) for f in waiting] == [True] * 20


def test_chain_of_futures_waiting_for_each_other_does_not_deadlock(local_server):
  # The first future blocks until the second arrives; the second releases it
  # and then blocks until the third arrives.
  client = local_server.client()
  first = client.futures.wait_for("a", 3)
  second = client.futures.set_and_wait("a", "b", 3)
  third = client.futures.release("b")
  assert first.result(TIMEOUT) is True
  assert second.result(TIMEOUT) is True
  assert third.result(TIMEOUT) is None


def test_futures_submitted_before_the_server_starts_return_at_once_and_complete_later():
  port = free_port()
  secret = os.urandom(32)
  client = Client(f"127.0.0.1:{port}", secret=secret, label="late[0]", timeout=TIMEOUT)
  future = client.futures.echo("early")  # returns although nothing listens yet
  assert not future.done()
  server = Server(Service(), secret=secret, label="late[0]", port=port)
  server.start()
  try:
    assert future.result(TIMEOUT) == "early"
    assert client.futures.echo("later").result(TIMEOUT) == "later"
  finally:
    client.close()
    server.stop()


def test_a_large_backlog_of_futures_drains_without_stalling():
  """Thousands of futures queued before the server exists: replies must be read
  while the backlog is sent, or the server, its replies unread, stops reading
  (it stalled to a few hundred calls a second when they were not)."""
  # A Unix socket, as same-host callers use: its buffers are small.
  address = f"unix:@launchpad-test-backlog-{os.urandom(6).hex()}"
  secret = os.urandom(32)
  client = Client(address, secret=secret, label="late[0]", timeout=TIMEOUT)
  payload = "x" * 1024  # 5000 of them overflow the socket buffers both ways
  futures = [client.futures.echo((i, payload)) for i in range(5000)]
  server = Server(Service(), secret=secret, label="late[0]")
  server.start(previous=[address])
  assert server.local_address == address
  try:
    _, not_done = concurrent.futures.wait(futures, timeout=12)
    assert not not_done, f"{len(not_done)} of 5000 futures still pending"
    assert [f.result()[0] for f in futures] == list(range(5000))
  finally:
    client.close()
    server.stop()

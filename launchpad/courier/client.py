"""The courier client: calls a server's methods as if they were local.

`client.method(...)` sends from the calling thread on a connection of that
thread's own and reads the reply there: no other thread is woken. `client.
futures.method(...)` returns a Future at once; those calls share one
connection per client whose reader thread completes the futures, so many
calls are in flight at a time.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Protocol

from launchpad import errors
from launchpad.courier import protocol, serialization
from launchpad.tls import TlsConfig


class AddressResolver(Protocol):
  """Where a node's server is; a coordinator-backed resolver waits for it."""

  def resolve(self, timeout: float | None) -> str:
    """The server's address, waiting up to `timeout` for it to register."""

  def forget(self) -> None:
    """Drops a cached address (the server moved or has not bound yet)."""

  @property
  def waits(self) -> bool:
    """True if the address may appear later, so refused connections are retried."""


class StaticAddress:
  """A fixed 'host:port'."""

  waits = False

  def __init__(self, address: str):
    protocol.socket_address(address)
    self._address = address

  def resolve(self, timeout: float | None) -> str:
    return self._address

  def forget(self) -> None:
    pass


class Client:
  """Calls the public methods of the object served by a courier server.

  Args:
    address: 'host:port', or a resolver that finds the node's address.
    secret: the program's secret.
    label: the node's name, used in errors.
    timeout: seconds a call may take, waiting for the server included;
      None waits as long as the program runs.
    tls: the program's TLS settings; TCP connections then use TLS.
  """

  def __init__(
    self,
    address: str | AddressResolver,
    *,
    secret: bytes,
    label: str = "courier",
    timeout: float | None = None,
    tls: TlsConfig | None = None,
  ):
    resolver = StaticAddress(address) if isinstance(address, str) else address
    self._channel = _Channel(resolver, secret, label, tls)
    self._timeout = timeout

  def __getattr__(self, name: str) -> _Method:
    if name.startswith("__"):
      raise AttributeError(name)
    return _Method(self._channel, name, self._timeout, as_future=False)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._channel.call("__call__", args, kwargs, self._timeout)

  @property
  def futures(self) -> _Futures:
    """`client.futures.method(...)` returns a concurrent.futures.Future."""
    return _Futures(self._channel, self._timeout)

  def with_timeout(self, timeout: float | None) -> Client:
    """A view of this client whose calls use `timeout`; connections are shared."""
    view = object.__new__(Client)
    view._channel = self._channel
    view._timeout = timeout
    return view

  def close(self) -> None:
    """Closes this client's connections; later calls open new ones."""
    self._channel.close()

  def __reduce__(self):
    raise errors.SerializationError(
      f"a courier client of node {self._channel.label} cannot be sent to another "
      "node; pass the node's handle instead (program.add_node(...) returns it)."
    )

  def __repr__(self) -> str:
    return f"<courier.Client of {self._channel.label}>"


class _Method:
  __slots__ = ("_as_future", "_channel", "_name", "_timeout")

  def __init__(self, channel: _Channel, name: str, timeout: float | None, as_future: bool):
    self._channel = channel
    self._name = name
    self._timeout = timeout
    self._as_future = as_future

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    if self._as_future:
      return self._channel.submit(self._name, args, kwargs, self._timeout)
    return self._channel.call(self._name, args, kwargs, self._timeout)


class _Futures:
  __slots__ = ("_channel", "_timeout")

  def __init__(self, channel: _Channel, timeout: float | None):
    self._channel = channel
    self._timeout = timeout

  def __getattr__(self, name: str) -> _Method:
    if name.startswith("__"):
      raise AttributeError(name)
    return _Method(self._channel, name, self._timeout, as_future=True)

  def __call__(self, *args: Any, **kwargs: Any) -> Future:
    return self._channel.submit("__call__", args, kwargs, self._timeout)


def decode_reply(frame: protocol.Frame, label: str) -> Any:
  """The result carried by a reply frame, or raises the remote exception."""
  if frame.kind == protocol.REPLY:
    return serialization.loads(frame.payload, frame.buffers)
  raise remote_exception(serialization.loads(frame.payload, frame.buffers), label)


def remote_exception(reply: tuple, label: str) -> BaseException:
  """Rebuilds a remote exception, with the remote traceback as its cause."""
  node, type_name, message, text, pickled = reply
  error: BaseException | None = None
  if pickled is not None:
    try:
      error = pickle.loads(pickled)
    except Exception:  # noqa: BLE001 - the type may not exist here
      error = None
  if not isinstance(error, BaseException):
    return errors.RemoteError(node, type_name, message, text)
  error.__cause__ = errors.RemoteTraceback(node, text)
  error.add_note(f"(raised in node {node}; its traceback is above)")
  return error


class _Channel:
  """The connections of one client (and its views) to one server."""

  def __init__(self, resolver: AddressResolver, secret: bytes, label: str, tls: TlsConfig | None):
    self.label = label
    self._resolver = resolver
    self._secret = secret
    self._tls = tls
    self._local = threading.local()
    self._lock = threading.Lock()
    self._pipelined: _PipelinedConnection | None = None

  def call(self, method: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    conn = getattr(self._local, "conn", None)
    if conn is None:
      conn = self._local.conn = _SyncConnection(*self._connect(deadline, method))
    try:
      frame = conn.call(method, args, kwargs, deadline, self.label)
    except TimeoutError:
      self._local.conn = None
      conn.close()
      raise errors.CallTimeoutError(
        f"call {self.label}.{method} got no reply within {timeout} s; the node "
        "may be busy or stuck. Raise the timeout with client.with_timeout(seconds)."
      ) from None
    except (EOFError, OSError) as e:
      self._local.conn = None
      conn.close()
      raise self._lost(method, conn.address, e) from None
    return decode_reply(frame, self.label)

  def submit(self, method: str, args: tuple, kwargs: dict, timeout: float | None) -> Future:
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._lock:
      conn = self._pipelined
      if conn is None or conn.closed:
        conn = self._pipelined = _PipelinedConnection(self, deadline, method)
    return conn.submit(method, args, kwargs, deadline, timeout)

  def close(self) -> None:
    with self._lock:
      if self._pipelined is not None:
        self._pipelined.close()
        self._pipelined = None
    conn = getattr(self._local, "conn", None)
    if conn is not None:
      conn.close()
      self._local.conn = None

  def _lost(self, method: str, address: str, cause: BaseException) -> errors.ConnectionLostError:
    return errors.ConnectionLostError(
      f"node {self.label} at {address} closed the connection during call "
      f"{method!r} ({cause or type(cause).__name__}): the node stopped or crashed."
    )

  def _connect(self, deadline: float | None, method: str) -> tuple[socket.socket, str]:
    """Opens an authenticated connection, waiting for the server until `deadline`."""
    delay = 0.005
    while True:
      remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
      try:
        address = self._resolver.resolve(remaining)
      except TimeoutError:
        raise errors.CallTimeoutError(
          f"call {self.label}.{method}: node {self.label} did not start serving "
          f"within the call's timeout ({_seconds(remaining)}); check that it is in "
          "the program and that its constructor finishes."
        ) from None
      try:
        return _open(address, self._secret, remaining, self._tls), address
      except (OSError, EOFError) as e:
        if isinstance(e, errors.AuthenticationError):
          raise
        self._resolver.forget()
        remaining = None if deadline is None else deadline - time.monotonic()
        if (remaining is not None and remaining <= 0) or (
          deadline is None and not self._resolver.waits
        ):
          raise errors.CallTimeoutError(
            f"call {self.label}.{method}: cannot connect to node {self.label} at "
            f"{address} ({type(e).__name__}: {e}); is the node running?"
          ) from None
        time.sleep(delay if remaining is None else min(delay, remaining))  # not listening yet
        delay = min(delay * 2, 0.5)


def _seconds(value: float | None) -> str:
  return "no limit" if value is None else f"{value:.3g} s"


def _open(
  address: str, secret: bytes, timeout: float | None, tls: TlsConfig | None
) -> socket.socket:
  sock = protocol.connect(address, timeout or None, tls)
  try:
    protocol.client_handshake(sock, secret, address)
  except BaseException:
    sock.close()
    raise
  sock.settimeout(None)
  return sock


class _SyncConnection:
  """A connection used by one thread at a time, one call in flight."""

  def __init__(self, sock: socket.socket, address: str):
    self.sock = sock
    self.address = address
    self._reader = protocol.FrameReader(sock)
    self._ids = itertools.count(1)
    self._round_trip = protocol.SPIN_SECONDS  # a moving average, seconds

  def call(
    self, method: str, args: tuple, kwargs: dict, deadline: float | None, label: str
  ) -> protocol.Frame:
    payload, buffers = serialization.dumps((method, args, kwargs), f"arguments of {label}.{method}")
    call_id = next(self._ids) & 0xFFFFFFFF
    start = time.perf_counter()
    protocol.send_frame(self.sock, protocol.REQUEST, 0, call_id, payload, buffers)
    frame = self._reader.read(deadline, spin=protocol.spin_for(self._round_trip))
    self._round_trip += 0.2 * (time.perf_counter() - start - self._round_trip)
    if frame.call_id != call_id:
      raise EOFError(f"reply to call {frame.call_id} while waiting for {call_id}")
    return frame

  def close(self) -> None:
    self.sock.close()


class _PipelinedConnection:
  """A connection shared by a client's futures.

  A thread connects it; then a reader thread completes futures as replies
  arrive. Calls submitted before the connection is up wait in a backlog, so
  submitting a future never blocks on the server starting.
  """

  def __init__(self, channel: _Channel, deadline: float | None, method: str):
    self.sock: socket.socket | None = None
    self.address = "(connecting)"
    self.closed = False
    self._channel = channel
    self._pending: dict[int, tuple[Future, str]] = {}
    self._backlog: list[tuple[int, bytes, list[memoryview]]] = []
    self._error: BaseException | None = None  # why connecting failed
    self._ids = itertools.count(1)
    self._write_lock = threading.Lock()
    threading.Thread(
      target=self._connect, args=(deadline, method), name=f"{channel.label}-connect", daemon=True
    ).start()

  def submit(
    self, method: str, args: tuple, kwargs: dict, deadline: float | None, timeout: float | None
  ) -> Future:
    label = self._channel.label
    future: Future = Future()
    payload, buffers = serialization.dumps((method, args, kwargs), f"arguments of {label}.{method}")
    with self._write_lock:
      if self._error is not None:
        _complete(future, error=self._error)
        return future
      call_id = next(self._ids) & 0xFFFFFFFF
      self._pending[call_id] = (future, method)
      if self.sock is None:
        self._backlog.append((call_id, payload, buffers))
      else:
        try:
          protocol.send_frame(
            self.sock, protocol.REQUEST, protocol.CONCURRENT, call_id, payload, buffers
          )
        except OSError:
          self.close()  # the reader fails every pending future, this one included
    if deadline is not None:
      _deadlines.add(deadline, self, call_id, timeout)
    return future

  def expire(self, call_id: int, timeout: float) -> None:
    entry = self._pending.pop(call_id, None)
    if entry is not None:
      future, method = entry
      _complete(
        future,
        error=errors.CallTimeoutError(
          f"call {self._channel.label}.{method} got no reply within {timeout} s."
        ),
      )

  def close(self) -> None:
    self.closed = True
    if self.sock is not None:
      try:
        self.sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass

  def _connect(self, deadline: float | None, method: str) -> None:
    try:
      sock, address = self._channel._connect(deadline, method)
    except Exception as e:  # noqa: BLE001 - every waiting future gets the reason
      self._fail_pending(e)
      return
    with self._write_lock:
      self.sock, self.address = sock, address
      # Replies must be read while the backlog is sent: a server whose
      # replies nobody reads stops reading requests.
      threading.Thread(
        target=self._read_loop, name=f"{self._channel.label}-futures", daemon=True
      ).start()
      backlog, self._backlog = self._backlog, []
      try:
        for call_id, payload, buffers in backlog:
          protocol.send_frame(
            sock, protocol.REQUEST, protocol.CONCURRENT, call_id, payload, buffers
          )
      except OSError:
        pass  # the reader sees the broken connection and fails the futures
    if self.closed:
      self.close()

  def _fail_pending(self, error: BaseException) -> None:
    self.closed = True
    with self._write_lock:
      self._error = error
      pending, self._pending, self._backlog = self._pending, {}, []
    for future, _ in pending.values():
      _complete(future, error=error)

  def _read_loop(self) -> None:
    reader = protocol.FrameReader(self.sock)
    error: BaseException | None = None
    try:
      while True:
        frame = reader.read()
        entry = self._pending.pop(frame.call_id, None)
        if entry is None:
          continue  # expired or cancelled
        try:
          _complete(entry[0], result=decode_reply(frame, self._channel.label))
        except Exception as e:  # noqa: BLE001 - the remote exception, or a decode failure
          _complete(entry[0], error=e)
    except (EOFError, OSError) as e:
      error = e
    finally:
      self.closed = True
      self.sock.close()
      with self._write_lock:
        pending, self._pending = self._pending, {}
      for future, method in pending.values():
        _complete(future, error=self._channel._lost(method, self.address, error))


def _complete(future: Future, result: Any = None, error: BaseException | None = None) -> None:
  if not future.set_running_or_notify_cancel():
    return
  if error is not None:
    future.set_exception(error)
  else:
    future.set_result(result)


class _DeadlineWatcher:
  """Fails futures whose per-call timeout passes; one thread, started on demand."""

  def __init__(self):
    self._heap: list[tuple[float, int, _PipelinedConnection, int, float]] = []
    self._order = itertools.count()
    self._wake = threading.Condition()
    self._thread: threading.Thread | None = None

  def add(self, deadline: float, conn: _PipelinedConnection, call_id: int, timeout: float) -> None:
    with self._wake:
      heapq.heappush(self._heap, (deadline, next(self._order), conn, call_id, timeout))
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, name="courier-deadlines", daemon=True)
        self._thread.start()
      elif self._heap[0][2] is conn and self._heap[0][3] == call_id:
        self._wake.notify()

  def _run(self) -> None:
    while True:
      with self._wake:
        while not self._heap or self._heap[0][0] > time.monotonic():
          self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
        _, _, conn, call_id, timeout = heapq.heappop(self._heap)
      conn.expire(call_id, timeout)


_deadlines = _DeadlineWatcher()

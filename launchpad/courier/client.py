"""The courier client: calls a server's methods as if they were local.

`client.method(...)` sends from the calling thread on a connection of that
thread's own and reads the reply there: no other thread is woken. `client.
futures.method(...)` returns a Future at once; those calls share one
connection per client whose reader thread completes the futures, so many
calls are in flight at a time.

A call has one deadline (`launchpad.timeouts.Deadline`), fixed when it
starts, for everything it waits for: the server starting, connecting, the
handshake, sending the request and the whole reply. A call is only sent while
its deadline has not passed, so a timeout of 0 fails at once and sends
nothing.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import pickle
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Protocol

from launchpad import errors, timeouts
from launchpad.courier import protocol, serialization, shared_memory, tls_socket
from launchpad.courier.future import CallFuture, complete_all
from launchpad.timeouts import Deadline
from launchpad.tls import TlsConfig

ADVICE = (
  "The node may be busy, stuck or overloaded; give the call more time with "
  "client.with_timeout(seconds)."
)
# Why a call raised without being sent.
NOT_SENT = "it was not sent, having no time left (a timeout of 0 never waits)"
_NO_REPLY = "no reply had arrived"
# A batch of futures' requests is written at the latest this long after its
# first request joined it, when no reply came to write it sooner.
FLUSH_SECONDS = 0.001


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
    timeout: seconds a call may take, all of it (waiting for the server,
      connecting, sending, the whole reply); None waits as long as the
      program runs; 0 lets no call wait, so each fails without being sent.
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
    self._timeout = _valid(timeout, label)

  def __getattr__(self, name: str) -> _Method:
    if name.startswith("__"):
      raise AttributeError(name)
    return _remember(self, _Method(self._channel, name, self._timeout, as_future=False))

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    method = self.__dict__.get("__call__") or _remember(
      self, _Method(self._channel, "__call__", self._timeout, as_future=False)
    )
    return method(*args, **kwargs)

  @property
  def futures(self) -> _Futures:
    """`client.futures.method(...)` returns a concurrent.futures.Future."""
    futures = self.__dict__.get("_futures")
    if futures is None:  # made on first use: views are made often (one per replay call)
      futures = self.__dict__["_futures"] = _Futures(self._channel, self._timeout)
    return futures

  def with_timeout(self, timeout: float | None) -> Client:
    """A view of this client whose calls use `timeout`; connections are shared."""
    timeout = _valid(timeout, self._channel.label)
    views = self.__dict__.setdefault("_views", {})
    view = views.get(timeout)
    if view is None:  # kept, with the methods it remembers, for the next call's view
      view = object.__new__(Client)
      view._channel = self._channel
      view._timeout = timeout
      if len(views) < MAX_REMEMBERED_VIEWS:
        views[timeout] = view
    return view

  def close(self) -> None:
    """Closes every connection of this client and of its views, those of
    every thread and the futures' one, from any thread. Calls in flight fail
    and later calls raise ClientClosedError; make a new client to call again."""
    self._channel.close()

  def __reduce__(self):
    raise errors.SerializationError(
      f"a courier client of node {self._channel.label} cannot be sent to another "
      "node; pass the node's handle instead (program.add_node(...) returns it)."
    )

  def __repr__(self) -> str:
    return f"<courier.Client of {self._channel.label}>"


def _valid(timeout: float | None, label: str) -> float | None:
  if type(timeout) is float and timeout >= 0:  # views are made often: the common case is quick
    return timeout
  return timeouts.validate(timeout, f"the timeout of the courier client of node {label}")


# Methods a client (or its futures) remembers as attributes, so that calling
# them again skips __getattr__ and building the method; beyond this many
# names (a caller making names up), methods are built on each access.
MAX_REMEMBERED_METHODS = 256
# Views a client keeps, by timeout (a replay client makes one per call).
MAX_REMEMBERED_VIEWS = 64
# Timeouts whose calls' deadlines a futures connection keeps in order
# (_DeadlineQueue); the deadlines of calls of further timeouts are watched one by one.
MAX_DEADLINE_QUEUES = 64


def _remember(owner: Any, method: _Method) -> _Method:
  if len(owner.__dict__) < MAX_REMEMBERED_METHODS:
    owner.__dict__[method.name] = method
  return method


class _Method:
  """One remote method of a client view, with the texts its errors use."""

  __slots__ = ("arguments", "as_future", "channel", "name", "never", "operation", "timeout")

  def __init__(self, channel: _Channel, name: str, timeout: float | None, as_future: bool):
    self.channel = channel
    self.name = name
    self.timeout = timeout
    self.as_future = as_future
    self.operation, self.arguments = channel.texts(name)
    # Without a timeout every call's deadline is the same: made once.
    self.never = Deadline(None, self.operation, ADVICE) if timeout is None else None

  def deadline(self) -> Deadline:
    """The deadline of a call starting now."""
    if self.never is not None:
      return self.never
    return Deadline(self.timeout, self.operation, ADVICE)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    if self.as_future:
      return self.channel.submit(self, args, kwargs)
    return self.channel.call(self, args, kwargs)


class _Futures:
  def __init__(self, channel: _Channel, timeout: float | None):
    self._channel = channel
    self._timeout = timeout

  def __getattr__(self, name: str) -> _Method:
    if name.startswith("__"):
      raise AttributeError(name)
    return _remember(self, _Method(self._channel, name, self._timeout, as_future=True))

  def __call__(self, *args: Any, **kwargs: Any) -> Future:
    method = self.__dict__.get("__call__") or _remember(
      self, _Method(self._channel, "__call__", self._timeout, as_future=True)
    )
    return method(*args, **kwargs)


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
  """The connections of one client (and its views) to one server.

  Each thread's synchronous connection is its own (thread-local); the
  channel also keeps a weak set of them, so that `close` reaches them all.
  """

  def __init__(self, resolver: AddressResolver, secret: bytes, label: str, tls: TlsConfig | None):
    self.label = label
    self.closed = False
    self._resolver = resolver
    self._secret = secret
    self._tls = tls
    self._local = threading.local()
    self._lock = threading.Lock()
    self._sync: weakref.WeakSet[_SyncConnection] = weakref.WeakSet()
    self._pipelined: _PipelinedConnection | None = None
    self._texts: dict[str, tuple[str, str]] = {}

  def texts(self, method: str) -> tuple[str, str]:
    """How errors name a call of `method` and its arguments (kept for the
    first MAX_REMEMBERED_METHODS names: views and their methods are made often)."""
    texts = self._texts.get(method)
    if texts is None:
      texts = (f"call {self.label}.{method}", f"arguments of {self.label}.{method}")
      if len(self._texts) < MAX_REMEMBERED_METHODS:
        self._texts[method] = texts
    return texts

  def call(self, method: _Method, args: tuple, kwargs: dict) -> Any:
    deadline = method.deadline()
    conn = getattr(self._local, "conn", None)
    if conn is None:
      conn = self._open_sync(deadline, method.name)
    with conn.lock:  # close() from another thread waits for no call, but sees this one
      if self.closed:
        self._local.conn = None
        raise self.closed_error(method.name)
      if deadline.expired():
        raise deadline.error(NOT_SENT)
      try:
        frame = conn.call(method, args, kwargs, deadline)
      except errors.CallTimeoutError:
        self._drop(conn)  # the connection may be in the middle of a frame
        raise
      except (EOFError, OSError) as e:
        self._drop(conn)
        if self.closed:
          raise self.closed_error(method.name) from None
        raise self.lost(method.name, conn.address, e) from None
    if self.closed:  # close() came during the call and left this connection to us
      self._drop(conn)
    return decode_reply(frame, self.label)

  def submit(self, method: _Method, args: tuple, kwargs: dict) -> Future:
    deadline = method.deadline()
    with self._lock:
      if self.closed:
        raise self.closed_error(method.name)
      conn = self._pipelined
      if conn is None or conn.closed:
        conn = self._pipelined = _PipelinedConnection(
          self, deadline, method.name, self._take_idle_sync()
        )
    return conn.submit(method, args, kwargs, deadline)

  def _take_idle_sync(self) -> tuple[socket.socket, str, shared_memory.Channel | None] | None:
    """The calling thread's synchronous connection, if it has one that is
    idle, handed over (self._lock held) to become the futures' connection:
    it is authenticated already, so the futures need not wait for a
    handshake (made in another thread, it waited for the caller to let go
    of the interpreter: ~20 ms of a burst of 2,000 futures; docs/design.md).
    The thread's next synchronous call connects anew."""
    conn = getattr(self._local, "conn", None)
    if conn is None or not conn.lock.acquire(blocking=False):
      return None
    try:
      taken = conn.detach()
    finally:
      conn.lock.release()
    if taken is not None:
      self._local.conn = None
      self._sync.discard(conn)
    return taken

  def close(self) -> None:
    """Closes every connection: idle ones here, busy ones by their callers,
    whose calls this wakes (a descriptor closed under a blocked call could be
    reused by another connection before that call returns)."""
    with self._lock:
      self.closed = True
      pipelined, self._pipelined = self._pipelined, None
      connections = list(self._sync)
    if pipelined is not None:
      pipelined.close()
    for conn in connections:
      if conn.lock.acquire(blocking=False):
        try:
          conn.close()
        finally:
          conn.lock.release()
      else:
        conn.wake()

  def closed_error(self, method: str) -> errors.ClientClosedError:
    return errors.ClientClosedError(
      f"call {self.label}.{method}: this courier client of node {self.label} was closed "
      "(client.close()); make a new client (dereference the node's handle again) to call it."
    )

  def lost(self, method: str, address: str, cause: BaseException) -> errors.ConnectionLostError:
    return errors.ConnectionLostError(
      f"node {self.label} at {address} closed the connection during call "
      f"{method!r} ({cause or type(cause).__name__}): the node stopped or crashed."
    )

  def _open_sync(self, deadline: Deadline, method: str) -> _SyncConnection:
    if self.closed:
      raise self.closed_error(method)
    conn = _SyncConnection(*self.connect(deadline, method))
    with self._lock:
      if self.closed:
        conn.close()
        raise self.closed_error(method)
      self._sync.add(conn)
    self._local.conn = conn
    return conn

  def _drop(self, conn: _SyncConnection) -> None:
    self._local.conn = None
    conn.close()

  def connect(
    self, deadline: Deadline, method: str
  ) -> tuple[socket.socket, str, shared_memory.Channel | None]:
    """Opens an authenticated connection, waiting for the server until
    `deadline`; on a Unix socket, with its shared-memory channel."""
    delay = 0.005
    failure = ""  # why the last attempt failed
    while True:
      if self.closed:
        raise self.closed_error(method)
      if deadline.expired():
        raise deadline.error(failure or NOT_SENT)
      try:
        address = self._resolver.resolve(deadline.remaining())
      except TimeoutError:
        raise deadline.error(
          f"node {self.label} did not start serving (check that it is in the program "
          "and that its constructor finishes)"
        ) from None
      try:
        sock, shared = _open(address, self._secret, deadline, self._tls)
        return sock, address, shared
      except errors.AuthenticationError:
        raise
      except errors.CallTimeoutError:
        if failure:  # the last attempt ran out of time: say why the others failed
          raise deadline.error(failure) from None
        raise
      except (OSError, EOFError) as e:
        self._resolver.forget()
        failure = f"cannot connect to node {self.label} at {address} ({type(e).__name__}: {e})"
        if deadline.at is None and not self._resolver.waits:
          raise errors.CallTimeoutError(
            f"call {self.label}.{method}: {failure}; is the node running?"
          ) from None
        remaining = deadline.remaining()
        time.sleep(delay if remaining is None else min(delay, remaining))  # not listening yet
        delay = min(delay * 2, 0.5)


def _open(
  address: str, secret: bytes, deadline: Deadline, tls: TlsConfig | None
) -> tuple[socket.socket, shared_memory.Channel | None]:
  sock = protocol.connect(address, deadline, tls)
  try:
    protocol.client_handshake(sock, secret, address, deadline)
    shared = shared_memory.offer(sock, deadline)
  except BaseException:
    sock.close()
    raise
  return sock, shared


class _SyncConnection:
  """A connection used by one thread at a time, one call in flight.

  `lock` is held during each call, so that another thread closing the
  client knows whether it may close the socket itself. A connection whose
  thread ended is collected with that thread's locals, and its socket closed.
  """

  def __init__(self, sock: socket.socket, address: str, shared: shared_memory.Channel | None):
    self.sock = sock
    self.address = address
    self.shared = shared
    self.lock = threading.Lock()
    # Closes once, by hand or when collected.
    self.close = weakref.finalize(self, shared_memory.close_connection, sock, shared)
    self._reader = protocol.FrameReader(sock, shared, serialization.load_stream)
    self._ids = itertools.count(1)
    self._round_trip = protocol.SPIN_SECONDS  # a moving average, seconds

  def call(self, method: _Method, args: tuple, kwargs: dict, deadline: Deadline) -> protocol.Frame:
    payload, buffers = serialization.dumps((method.name, args, kwargs), method.arguments)
    call_id = next(self._ids) & 0xFFFFFFFF
    start = time.perf_counter()
    protocol.send_frame(
      self.sock, protocol.REQUEST, 0, call_id, payload, buffers, deadline, self.shared
    )
    frame = self._reader.read(deadline, spin=protocol.spin_for(self._round_trip))
    self._round_trip += 0.2 * (time.perf_counter() - start - self._round_trip)
    if frame.call_id != call_id:
      raise EOFError(f"reply to call {frame.call_id} while waiting for {call_id}")
    return frame

  def detach(self) -> tuple[socket.socket, str, shared_memory.Channel | None] | None:
    """Gives up the socket (and shared-memory channel) for another owner,
    which closes them; None (and keeps them) if a byte of an unread frame
    is buffered. Its lock is held by the caller."""
    if self._reader.buffered() or not self.close.alive:
      return None
    self.close.detach()
    return self.sock, self.address, self.shared

  def wake(self) -> None:
    """Ends the connection under a call in progress, which then fails."""
    try:
      self.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass


class _PipelinedConnection:
  """A connection shared by a client's futures.

  It takes over the calling thread's idle synchronous connection if there
  is one (authenticated already); else a thread connects it. Then a reader
  thread completes futures as replies arrive, all that one read brought at
  once. Calls submitted before the connection is up wait in a backlog, so
  submitting a future never blocks on the server starting. Each future has
  its call's deadline: the deadline watcher fails it when it passes. A
  request is only sent before it, with a plain blocking write (as fast as
  the connection allows when the server is slower than the callers); if a
  future's deadline passes while its request is being written, the watcher
  cuts the connection, which wakes the writer.

  A small request made while others are in flight waits in a batch
  (protocol.FrameBatch), to go with the next ones in one write: the caller
  writes a full batch; the reader writes it once it has read every reply
  that came, and the watcher FLUSH_SECONDS after its first request, in case
  no reply comes sooner. Those two never block on the write: what the
  socket does not take at once waits for the next write (the reader must
  not stop reading replies, nor the watcher stop watching deadlines).
  """

  def __init__(
    self,
    channel: _Channel,
    deadline: Deadline,
    method: str,
    connected: tuple[socket.socket, str, shared_memory.Channel | None] | None = None,
  ):
    self.sock: socket.socket | None = None
    self.shared: shared_memory.Channel | None = None
    self.address = "(connecting)"
    self.closed = False
    self._channel = channel
    # call id -> (future, method name, deadline)
    self._pending: dict[int, tuple[Future, str, Deadline]] = {}
    self._deadline_queues: dict[float, _DeadlineQueue] = {}  # by timeout
    self._backlog: list[tuple[int, bytes, list[memoryview]]] = []
    self._error: BaseException | None = None  # why connecting failed
    self._cut: str | None = None  # why this client closed the connection itself
    self._sending: tuple[int, ...] | list[int] = ()  # the calls whose requests are being written
    self._ids = itertools.count(1)
    self._write_lock = threading.Lock()
    self._condition = threading.Condition()  # its futures'
    self._batch = protocol.FrameBatch()
    self._batch_expires: float | None = None  # the earliest deadline of the batch's calls
    self._unsent = b""  # the end of a batch the socket did not take at once
    self._batches = False  # whether requests may wait in the batch (once connected)
    if connected is not None:
      self._start(*connected)
    else:
      threading.Thread(
        target=self._connect, args=(deadline, method), name=f"{channel.label}-connect", daemon=True
      ).start()

  def submit(self, method: _Method, args: tuple, kwargs: dict, deadline: Deadline) -> Future:
    future = CallFuture(self._condition)
    payload, buffers = serialization.dumps((method.name, args, kwargs), method.arguments)
    if deadline.expired():
      _complete(future, error=deadline.error(NOT_SENT))
      return future
    with self._write_lock:
      if self._error is not None:
        _complete(future, error=self._error)
        return future
      call_id = next(self._ids) & 0xFFFFFFFF
      self._pending[call_id] = (future, method.name, deadline)
      if deadline.at is not None:  # before sending: the watcher may have to cut a stuck write
        self._watch(deadline, call_id)
      if self.sock is None:
        self._backlog.append((call_id, payload, buffers))
      elif len(self._pending) > 1 and self._batches and protocol.FrameBatch.fits(payload, buffers):
        self._hold(call_id, payload, deadline)
      else:
        self._write_batch()
        self._send(call_id, payload, buffers)
    return future

  def _watch(self, deadline: Deadline, call_id: int) -> None:
    """Has the watcher fail the call when its deadline passes (the write lock held)."""
    queue = self._deadline_queues.get(deadline.timeout)
    if queue is None:
      if len(self._deadline_queues) >= MAX_DEADLINE_QUEUES:  # timeouts made up per call
        _deadlines.schedule(deadline.at, functools.partial(self.expire, call_id))
        return
      queue = self._deadline_queues[deadline.timeout] = _DeadlineQueue(self)
    queue.add(deadline.at, call_id, self._pending)

  def _hold(self, call_id: int, payload: bytes, deadline: Deadline) -> None:
    """Puts a request in the batch (the write lock held); writes a full one."""
    first = not self._batch
    if deadline.at is not None and (
      self._batch_expires is None or deadline.at < self._batch_expires
    ):
      self._batch_expires = deadline.at
    if self._batch.add(protocol.REQUEST, protocol.CONCURRENT, call_id, payload):
      self._write_batch()
    elif first:
      _deadlines.flush_later(self)

  def _batched(self) -> bytes:
    """What is to be written of the batch (the write lock held): what an
    earlier write left, then the requests whose deadline has not passed."""
    pending = self._pending
    self._sending = self._batch.call_ids
    if self._batch_expires is not None and self._batch_expires <= time.monotonic():
      data = self._batch.take(lambda i: i in pending and not pending[i][2].expired())
    else:  # none can have expired
      data = self._batch.take()
    self._batch_expires = None
    if self._unsent:
      data, self._unsent = self._unsent + data, b""
    return data

  def _write_batch(self) -> None:
    """Writes the batch, blocking as a request's write does (the write lock held)."""
    if not self._batch and not self._unsent:
      return
    data = self._batched()
    try:
      self.sock.sendall(data)
    except OSError:
      self.close()  # the reader fails every pending future
    finally:
      self._sending = ()

  def flush(self) -> None:
    """Writes what the socket takes at once of the batch; never blocks."""
    if not self._write_lock.acquire(blocking=False):
      _deadlines.flush_later(self)  # a writer is in, which may only add to the batch
      return
    try:
      if self.closed or (not self._batch and not self._unsent):
        return
      data = self._batched()
      self._sending = ()
      try:
        sent = self.sock.send(data, socket.MSG_DONTWAIT)
      except BlockingIOError:
        sent = 0
      except OSError:
        self.close()
        return
      if sent < len(data):
        self._unsent = data[sent:]
        if self._pending:  # else the next request's write takes the rest
          _deadlines.flush_later(self)
    finally:
      self._write_lock.release()

  def _send(self, call_id: int, payload: bytes, buffers: list[memoryview]) -> None:
    """Sends a request (the write lock held) unless its deadline has passed;
    a failure closes the connection, which may be cut in the middle of a frame."""
    entry = self._pending.get(call_id)
    if entry is None or entry[2].expired():
      return  # its deadline passed while it waited to be sent: the watcher fails it
    self._sending = (call_id,)
    try:
      protocol.send_frame(
        self.sock,
        protocol.REQUEST,
        protocol.CONCURRENT,
        call_id,
        payload,
        buffers,
        shared=self.shared,
      )
    except OSError:
      self.close()  # the reader fails every pending future, this one included
    finally:
      self._sending = ()

  def expire(self, call_id: int) -> None:
    entry = self._pending.pop(call_id, None)
    if entry is None:
      return  # answered already
    deadline = entry[2]
    if self.sock is None:
      what = "it was still waiting to connect to its node"
    elif call_id in self._sending:
      what = "while sending the request"
      self._cut = (
        f"the client closed its connection to node {self._channel.label} at {self.address} "
        "because a request could not be sent within its timeout (the node may be stuck)"
      )
      self.close()  # wakes the writer; the reader fails the other pending futures
    else:
      what = _NO_REPLY
    _complete(entry[0], error=deadline.error(what))

  def close(self) -> None:
    self.closed = True
    if self.sock is not None:
      try:
        self.sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass

  def _connect(self, deadline: Deadline, method: str) -> None:
    """Connects by the latest deadline of the futures waiting for it."""
    while True:
      try:
        sock, address, shared = self._channel.connect(deadline, method)
        break
      except Exception as e:  # noqa: BLE001 - every waiting future gets the reason
        later = self._later_deadline() if deadline.expired() else None
        if later is None:
          self._fail_pending(e)
          return
        deadline = later
    self._start(sock, address, shared)

  def _start(self, sock: socket.socket, address: str, shared: shared_memory.Channel | None) -> None:
    """Starts reading replies on a connection that is up, and sends what waited for it."""
    with self._write_lock:
      self.sock, self.address, self.shared = sock, address, shared
      # TLS writes go through one object under its own lock, not MSG_DONTWAIT.
      self._batches = not isinstance(sock, tls_socket.TlsSocket)
      # Replies must be read while the backlog is sent: a server whose
      # replies nobody reads stops reading requests.
      threading.Thread(
        target=self._read_loop, name=f"{self._channel.label}-futures", daemon=True
      ).start()
      backlog, self._backlog = self._backlog, []
      for call_id, payload, buffers in backlog:
        if self.closed:
          break  # the reader fails what is left
        if self._batches and protocol.FrameBatch.fits(payload, buffers):
          entry = self._pending.get(call_id)
          if entry is not None:  # else its deadline passed: the watcher failed it
            self._hold(call_id, payload, entry[2])
        else:
          self._write_batch()
          self._send(call_id, payload, buffers)
      if not self.closed:
        self._write_batch()
    if self.closed:
      self.close()

  def _later_deadline(self) -> Deadline | None:
    """The deadline of a future that waits for the connection and has the
    most time left; None if none waits (the watcher fails those it expires)."""
    with self._write_lock:
      entries = [self._pending.get(i) for i, _, _ in self._backlog]  # the watcher may pop some
    waiting = [entry[2] for entry in entries if entry is not None]
    waiting = [d for d in waiting if not d.expired()]
    if not waiting:
      return None
    return max(waiting, key=lambda d: float("inf") if d.at is None else d.at)

  def _fail_pending(self, error: BaseException) -> None:
    self.closed = True
    with self._write_lock:
      self._error = error
      pending, self._pending, self._backlog = self._pending, {}, []
    for future, _, _ in pending.values():
      _complete(future, error=error)

  def _read_loop(self) -> None:
    reader = protocol.FrameReader(self.sock, self.shared, serialization.load_stream)
    error: BaseException | None = None
    frames: list[protocol.Frame] = []
    try:
      while True:
        frames.append(reader.read())
        reader.read_ready(frames)
        if (self._batch or self._unsent) and not reader.has_frame():
          self.flush()  # every reply that came is read: the server has room for more
        self._complete_replies(frames)
        # Not kept while waiting for the next: the replies' memory (maybe shared) is the callers'.
        frames.clear()
    except (EOFError, OSError) as e:
      # Only its text is used. Its traceback would keep this frame (and those
      # of a frame cut short, whose shared memory may be mapped) in a cycle
      # until the collector runs.
      error = e.with_traceback(None)
    finally:
      self.closed = True
      shared_memory.close_connection(self.sock, self.shared)
      with self._write_lock:
        pending, self._pending = self._pending, {}
      for future, method, _ in pending.values():
        _complete(future, error=self._lost(method, error))

  def _complete_replies(self, frames: list[protocol.Frame]) -> None:
    """Completes the futures the replies in `frames` answer (those not
    expired or cancelled), all at once (future.complete_all)."""
    pending, label = self._pending, self._channel.label
    outcomes = []
    for frame in frames:
      entry = pending.pop(frame.call_id, None)
      if entry is None:
        continue  # expired or cancelled
      try:
        outcomes.append((entry[0], decode_reply(frame, label), None))
      except Exception as e:  # noqa: BLE001 - the remote exception, or a decode failure
        outcomes.append((entry[0], None, e))
    if outcomes:
      complete_all(self._condition, outcomes)

  def _lost(self, method: str, cause: BaseException | None) -> BaseException:
    """Why a future pending when the connection ended failed."""
    channel = self._channel
    if channel.closed:
      return channel.closed_error(method)
    if self._cut is not None:
      return errors.ConnectionLostError(f"call {channel.label}.{method}: {self._cut}.")
    return channel.lost(method, self.address, cause)


def _complete(future: Future, result: Any = None, error: BaseException | None = None) -> None:
  """Completes a future unless its caller cancelled it.

  Straight from pending to done: one hold of the future's lock, where
  set_running_or_notify_cancel first took two (~40% of a pipelined call's
  client CPU went into completing futures; see docs/design.md). A cancelled
  future refuses the result and is then told, as wait() and as_completed()
  need.
  """
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except InvalidStateError:
    if future.cancelled():
      future.set_running_or_notify_cancel()


class _DeadlineQueue:
  """The deadlines of one connection's calls of one timeout, in the order
  they were made: calls with the same timeout expire in that order, so only
  the head's time is in the watcher's heap, not one entry per call (a heap
  push per future was ~7% of a caller's CPU with a timeout; docs/design.md).

  Answered calls leave the head as the next call joins; the watcher takes
  the calls whose time has come from the head and fails those still pending.
  (Calls of two threads may join in the other order than their deadlines
  were fixed in; the one that joined second then fails that much late, at
  most the time it took from its start to joining: pickling its arguments
  and taking the write lock.)
  """

  __slots__ = ("conn", "items", "lock", "scheduled")

  def __init__(self, conn: _PipelinedConnection):
    self.conn = conn
    self.items: collections.deque[tuple[float, int]] = collections.deque()  # (when, call id)
    self.lock = threading.Lock()
    self.scheduled = False  # whether the head's time is in the watcher's heap

  def add(self, at: float, call_id: int, pending: dict) -> None:
    """Adds a call of the connection, whose calls still waiting are `pending`."""
    with self.lock:
      items = self.items
      while items and items[0][1] not in pending:
        items.popleft()  # answered
      items.append((at, call_id))
      if self.scheduled:
        return
      self.scheduled = True
    _deadlines.schedule(at, self.expire_due)

  def expire_due(self) -> None:
    """Fails the calls whose deadline has passed; schedules the next one's."""
    now = time.monotonic()
    due = []
    with self.lock:
      items = self.items
      while items and items[0][0] <= now:
        due.append(items.popleft()[1])
      later = items[0][0] if items else None
      self.scheduled = later is not None
    for call_id in due:
      self.conn.expire(call_id)
    if later is not None:
      _deadlines.schedule(later, self.expire_due)


class _DeadlineWatcher:
  """Runs what must happen at a time: fails futures whose call's deadline
  passes (_DeadlineQueue), writes batches that wait too long (FLUSH_SECONDS);
  one thread, started on demand."""

  def __init__(self):
    # (when, order, what to call then)
    self._heap: list[tuple[float, int, Callable[[], None]]] = []
    self._order = itertools.count()
    self._wake = threading.Condition()
    self._thread: threading.Thread | None = None

  def flush_later(self, conn: _PipelinedConnection) -> None:
    self.schedule(time.monotonic() + FLUSH_SECONDS, conn.flush)

  def schedule(self, at: float, action: Callable[[], None]) -> None:
    """Calls `action` in the watcher's thread once time.monotonic() reaches `at`."""
    with self._wake:
      order = next(self._order)
      heapq.heappush(self._heap, (at, order, action))
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, name="courier-deadlines", daemon=True)
        self._thread.start()
      elif self._heap[0][1] == order:
        self._wake.notify()

  def _run(self) -> None:
    while True:
      with self._wake:
        while not self._heap or self._heap[0][0] > time.monotonic():
          self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
        action = heapq.heappop(self._heap)[2]
      action()


_deadlines = _DeadlineWatcher()

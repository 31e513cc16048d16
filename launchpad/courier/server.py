"""The courier server: serves the public methods of one Python object.

Each connection has one reading thread, which also runs the requests it
reads: handing each request to a pool thread would cost a thread wake-up per
call, which on small virtual machines is most of a round trip. A synchronous
client sends nothing until it has its reply, so nothing waits behind its
call. Futures (flag CONCURRENT) may be many in flight on one connection and
may wait for each other (a batched handler filling its batch), so a watchdog
gives the connection a new reading thread whenever a request has been running
for HANDOFF_SECONDS: short calls stay inline, long ones run side by side.

A connection must finish its handshake within one deadline
(`handshake_timeout`), however it paces its bytes. When the process runs out
of file descriptors (or threads), accepting backs off and sheds the oldest
connections that have not authenticated yet, so that a flood of idle
connections cannot stop a server from ever serving again.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from launchpad import accept_loop, errors, timeouts
from launchpad.courier import protocol, serialization, shared_memory, tls_socket
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

HANDOFF_SECONDS = 0.005
# A peer gets this long to prove it knows the secret, all messages included.
HANDSHAKE_SECONDS = 10.0


def public_methods(obj: Any) -> dict[str, Callable[..., Any]]:
  """The methods a client may call: public callables, and `__call__`."""
  methods = {}
  for name in dir(obj):
    if name.startswith("_"):
      continue
    try:
      value = getattr(obj, name)
    except Exception:  # noqa: BLE001 - a failing property is simply not a method
      continue
    if callable(value) and not isinstance(value, type):
      methods[name] = value
  if callable(obj) and not isinstance(obj, type):
    methods["__call__"] = obj
  return methods


def encode_error(error: BaseException, node: str) -> bytes:
  """A reply describing `error`, rebuilt as the same type by the client."""
  text = "".join(traceback.format_exception(error))
  try:
    pickled = serialization.dumps(error, "exception", out_of_band=False)[0]
  except Exception:  # noqa: BLE001 - the client falls back to RemoteError
    pickled = None
  qualname = f"{type(error).__module__}.{type(error).__qualname__}"
  return serialization.dumps((node, qualname, str(error), text, pickled))[0]


class Server:
  """Serves `obj`'s public methods on host:port (port 0: any free port).

  Args:
    obj: the object whose public methods become remote procedures.
    secret: the program's secret; connections that cannot prove they know it
      are closed before anything they send is unpickled.
    label: the node name used in error messages.
    host: the interface to bind; loopback unless other hosts must call in.
    port: the port to bind; 0 lets the system choose.
    tls: the program's TLS settings; TCP connections must then use TLS.
    initializer: runs first in every thread that handles requests (a node
      marks its threads as its own, for lp.stop() and handles called there).
    handshake_timeout: seconds a new connection has to complete its
      handshake (TLS included), after which it is closed.
  """

  def __init__(
    self,
    obj: Any,
    *,
    secret: bytes,
    label: str = "courier",
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    initializer: Callable[[], None] | None = None,
    handshake_timeout: float = HANDSHAKE_SECONDS,
  ):
    self._initializer = initializer
    self._handshake_timeout = timeouts.validate(
      handshake_timeout, f"the handshake_timeout of the server of node {label}"
    )
    self._methods = public_methods(obj)
    self._secret = secret
    self._tls = tls
    self._label = label
    self._host = host
    self._port = port
    self._listeners: list[socket.socket] = []
    self._connections: set[_Connection] = set()
    self._lock = threading.Lock()
    self._stopped = threading.Event()
    # Sheds the oldest connections still in their handshake when descriptors run out.
    self._acceptor = accept_loop.Acceptor(
      f"node {label}", self._open_connection, self._stopped, self._start_thread
    )
    self._watchdog = _Watchdog(self)
    self._busy = 0  # requests being handled, replies included
    # Requests handled, and those that raised, since the server started:
    # plain increments, read once a second by the stats reporter (stats.py).
    self.calls = 0
    self.errors = 0
    self._idle = threading.Condition()
    self.address: str | None = None
    self.local_address: str | None = None

  def start(self, previous: list[str] = ()) -> str:
    """Binds and starts serving; returns the address that clients must use.

    Besides host:port, the server listens on an abstract Unix socket
    (`local_address`) that clients on the same host use: a round trip over it
    costs a third of one over loopback TCP.

    Args:
      previous: addresses this node had before a restart; they are bound
        again when free, so callers' cached addresses stay valid.
    """
    port = self._port
    local = f"{protocol.UNIX_PREFIX}@launchpad-{os.getpid()}-{os.urandom(6).hex()}"
    for address in previous:
      if address.startswith(protocol.UNIX_PREFIX):
        local = address
      elif not port:
        port = protocol.socket_address(address)[1][1]
    listener = _bind(protocol.format_address(self._host, port))
    if listener is None:  # the old port was taken meanwhile
      listener = _bind(protocol.format_address(self._host, self._port))
    self.address = protocol.format_address(self._host, listener.getsockname()[1])
    self._listen(listener)
    if hasattr(socket, "AF_UNIX") and os.path.exists("/proc/self/ns/net"):
      listener = _bind(local) or _bind(f"{local}-{os.urandom(4).hex()}")
      self.local_address = _address_of(listener)
      self._listen(listener)
    return self.address

  def _listen(self, listener: socket.socket) -> None:
    listener.listen(1024)
    self._listeners.append(listener)
    self._acceptor.listen(listener, f"{self._label}-accept")

  @property
  def shed(self) -> int:
    """Connections closed before their handshake ended, to free descriptors."""
    return self._acceptor.shed

  def stop(self) -> None:
    """Stops accepting calls and closes every connection; calls in flight fail."""
    with self._lock:
      if self._stopped.is_set():
        return
      self._stopped.set()
      connections = list(self._connections)
    for listener in self._listeners:
      _shutdown(listener)
    for conn in connections:
      _shutdown(conn.sock)
    self._acceptor.wake_pending()  # their handshake threads close them
    self._watchdog.stop()

  def connections(self) -> list[_Connection]:
    with self._lock:
      return list(self._connections)

  def _open_connection(self, sock: socket.socket) -> None:
    raw = sock
    deadline = timeouts.Deadline(
      self._handshake_timeout, f"the handshake of a new connection to node {self._label}"
    )
    try:
      try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
          sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
          if self._tls is not None:
            sock = tls_socket.wrap_server(sock, self._tls, deadline)
        accepted = protocol.server_handshake(sock, self._secret, deadline)
        shared = shared_memory.accept(sock, deadline) if accepted else None
      finally:
        self._acceptor.done(raw)
    except errors.CallTimeoutError as e:
      log.info("%s: closed a connection: %s", self._label, e)
      raw.close()
      return
    except (EOFError, OSError):
      raw.close()
      return
    if not accepted:
      log.warning("%s: refused a connection that did not know the program secret", self._label)
      raw.close()
      return
    conn = _Connection(sock, shared)
    with self._lock:
      if self._stopped.is_set():
        conn.close()
        return
      self._connections.add(conn)
    self._read_loop(conn, conn.generation)

  def _read_loop(self, conn: _Connection, generation: int) -> None:
    """Reads and runs requests until the peer leaves or another thread takes over."""
    try:
      conn.flush()  # replies the thread before this one held back
      while True:
        frame = conn.reader.read(spin=protocol.SPIN_SECONDS)
        if frame.kind != protocol.REQUEST:
          log.warning("%s: closing a connection that sent frame kind %d", self._label, frame.kind)
          break
        if not frame.flags & protocol.CONCURRENT:
          self._handle(conn, frame)
          frame = None  # its arguments' memory (maybe shared) is not kept while waiting
          continue
        conn.busy_since = time.monotonic()
        self._watchdog.wake()
        self._handle(conn, frame, generation)
        frame = None
        with conn.lock:
          if conn.generation != generation:
            return  # the watchdog gave the connection to another thread
          conn.busy_since = None
    except (EOFError, OSError):
      pass  # the peer went away, or the server stopped
    except Exception:
      log.exception("%s: closing a connection after an unexpected error", self._label)
    with self._lock:
      self._connections.discard(conn)
    conn.close()

  def hand_off(self, conn: _Connection) -> None:
    """Starts a new reading thread for `conn`, whose reader is stuck in a call."""
    self._start_thread(self._read_loop, conn, conn.generation)

  def _start_thread(self, target: Callable[..., None], *args: Any) -> None:
    """A thread that handles requests: the initializer runs first in it."""

    def run() -> None:
      if self._initializer is not None:
        self._initializer()
      target(*args)

    threading.Thread(target=run, name=f"{self._label}-conn", daemon=True).start()

  def drain(self, timeout: float) -> bool:
    """Waits up to `timeout` seconds until no request is being handled (its
    reply sent); True if none is. For a graceful stop: drain, then stop."""
    with self._idle:
      return self._idle.wait_for(lambda: not self._busy, timeout)

  def _handle(
    self, conn: _Connection, frame: protocol.Frame, generation: int | None = None
  ) -> None:
    with self._idle:
      self._busy += 1
    try:
      self._reply(conn, frame, generation)
    finally:
      with self._idle:
        self._busy -= 1
        if not self._busy:
          self._idle.notify_all()

  def _reply(self, conn: _Connection, frame: protocol.Frame, generation: int | None) -> None:
    self.calls += 1
    try:
      method, args, kwargs = serialization.loads(frame.payload, frame.buffers)
      result = self._lookup(method)(*args, **kwargs)
      payload, buffers = serialization.dumps(result, f"result of {self._label}.{method}")
      kind = protocol.REPLY
    except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
      payload, buffers, kind = encode_error(e, self._label), [], protocol.ERROR
      self.errors += 1
    try:
      with conn.write_lock:
        if generation is not None and protocol.FrameBatch.fits(payload, buffers):
          # Held back while the next request is already read, if this
          # thread still reads the connection (else its reader may wait).
          full = conn.batch.add(kind, 0, frame.call_id, payload)
          if full or conn.generation != generation or not conn.reader.has_frame():
            conn.write_held()
          return
        conn.write_held()
        protocol.send_frame(conn.sock, kind, 0, frame.call_id, payload, buffers, shared=conn.shared)
    except OSError:
      pass  # the caller went away; nobody is left to tell

  def _lookup(self, method: str) -> Callable[..., Any]:
    try:
      return self._methods[method]
    except KeyError:
      available = ", ".join(sorted(self._methods)) or "none"
      raise AttributeError(
        f"node {self._label} has no method {method!r}; available methods: {available}."
      ) from None


class _Connection:
  """One client connection; `generation` names the thread allowed to read it.

  Replies to concurrent requests wait in `batch` while the connection's
  reader has the next request in hand, and go out together once it has
  none (or the batch is full): a client that pipelines calls gets many
  replies per write. A reply held behind a request that runs long goes out
  when the watchdog hands the connection to a new reader, which first
  writes the batch (HANDOFF_SECONDS, plus a tick of the watchdog, at most).
  """

  def __init__(self, sock: socket.socket, shared: shared_memory.Channel | None = None):
    self.sock = sock
    self.shared = shared
    self.reader = protocol.FrameReader(sock, shared, serialization.load_stream)
    self.write_lock = threading.Lock()
    self.batch = protocol.FrameBatch()
    self.lock = threading.Lock()
    self.generation = 0
    self.busy_since: float | None = None

  def flush(self) -> None:
    """Writes the replies held back."""
    with self.write_lock:
      self.write_held()

  def write_held(self) -> None:
    """Writes the replies held back (the write lock held)."""
    if self.batch:
      self.sock.sendall(self.batch.take())

  def close(self) -> None:
    shared_memory.close_connection(self.sock, self.shared)


class _Watchdog:
  """Gives a connection a new reader when its reader runs a long request.

  It ticks every HANDOFF_SECONDS while concurrent requests arrive and sleeps
  once a tick finds none running.
  """

  def __init__(self, server: Server):
    self._server = server
    self._wake = threading.Event()
    self._stopped = False
    self._thread: threading.Thread | None = None

  def wake(self) -> None:
    if self._wake.is_set():
      return
    self._wake.set()
    if self._thread is None:
      self._thread = threading.Thread(target=self._run, name="courier-watchdog", daemon=True)
      self._thread.start()

  def stop(self) -> None:
    self._stopped = True
    self._wake.set()

  def _run(self) -> None:
    while True:
      self._wake.wait()
      if self._stopped:
        return
      time.sleep(HANDOFF_SECONDS)
      busy = False
      now = time.monotonic()
      for conn in self._server.connections():
        with conn.lock:
          if conn.busy_since is None:
            continue
          busy = True
          if now - conn.busy_since >= HANDOFF_SECONDS:
            conn.busy_since = None
            conn.generation += 1
            self._server.hand_off(conn)
      if not busy:
        self._wake.clear()
        # A request may have started between the scan and the clear.
        if any(c.busy_since is not None for c in self._server.connections()):
          self._wake.set()


def _bind(address: str) -> socket.socket | None:
  """A socket bound to `address`; None if the address is in use."""
  family, sockaddr = protocol.socket_address(address)
  sock = socket.socket(family, socket.SOCK_STREAM)
  if family != socket.AF_UNIX:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind(sockaddr)
  except OSError as e:
    sock.close()
    if e.errno == errno.EADDRINUSE:
      return None
    raise
  return sock


def _address_of(sock: socket.socket) -> str:
  name = sock.getsockname()
  if sock.family == socket.AF_UNIX:
    path = name.decode() if isinstance(name, bytes) else name
    return protocol.UNIX_PREFIX + ("@" + path[1:] if path.startswith("\0") else path)
  return protocol.format_address(name[0], name[1])


def _shutdown(sock: socket.socket) -> None:
  accept_loop.wake(sock)
  sock.close()

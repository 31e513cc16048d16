"""The broadcast node's service: the newest version, and who may have it.

The node holds the newest version as a memfd and nothing else: it never
maps it for readers of its own host, it only hands them a read-only
descriptor that holds the version (layout.hold). Publishers of its host
hand it their memfd the same way, so a version is written once, by its
publisher, and read in place by every reader of the host.

The node keeps the version before the newest open too, until the next one
arrives, and closes it then, after its reply to that publisher: a reader
that fetches the newest version drops the one before while the node still
holds it, so the reader is never the one that frees a file's memory (64
MB: ~9 ms quiet, ~25 ms of a 32-reader delivery under load, when each
version had a fresh file) in the middle of a delivery. A reader that
keeps an old version's arrays keeps that file from being written again.

Callers on other hosts reach the same versions through courier methods
(`publish`, `fetch`), which carry the pickled parameters, one copy per call.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from launchpad import accept_loop, errors
from launchpad.broadcast import layout, pool, wire
from launchpad.courier import protocol
from launchpad.host_identity import host_id
from launchpad.timeouts import Deadline

log = logging.getLogger(__name__)

# How long a connecting reader or publisher has for courier's handshake.
HANDSHAKE_SECONDS = 10.0


class Versions:
  """The newest version (its number and memfd), and waits for newer ones;
  the memfd of the version before it, to be freed here (module docstring)."""

  def __init__(self, what: str):
    self._what = what
    self._changed = threading.Condition()
    self._version = 0
    self._fd: int | None = None
    self._previous: int | None = None
    self._closed = False
    self._mapped: tuple[int, Any] | None = None  # for callers on other hosts

  def put(self, fd: int) -> tuple[int, int | None]:
    """Takes ownership of `fd` (from layout.hold) as the next version: (its
    number, the descriptor of the version two before it, for the caller to
    close once it has replied, or None). The number is 0 if the node has
    closed."""
    with self._changed:
      if self._closed:
        os.close(fd)
        return 0, None
      retired, self._previous, self._fd = self._previous, self._fd, fd
      self._version += 1
      self._changed.notify_all()
      return self._version, retired

  def get(self, min_version: int, timeout: float | None) -> tuple[int, int, int | None]:
    """(status, version, a dup of its fd) once version >= min_version; the fd
    is the caller's to close."""
    with self._changed:
      ready = self._changed.wait_for(
        lambda: self._closed or self._version >= max(min_version, 1), timeout
      )
      if self._closed:
        return wire.CLOSED, self._version, None
      if not ready:
        return wire.TIMEOUT, self._version, None
      return wire.OK, self._version, os.dup(self._fd)

  def params(self, version: int) -> Any:
    """The parameters of `version` (read from its memfd, mapped once here)."""
    with self._changed:
      if self._mapped is None or self._mapped[0] != version:
        self._mapped = None  # drops the older mapping first
        fd = self._fd
        if fd is None or version != self._version:
          return None
        self._mapped = (version, layout.read(fd, self._what))
      return self._mapped[1]

  def live(self) -> int:
    """How many versions this node holds a descriptor of: the newest, and
    the one before it (0, 1 or 2)."""
    with self._changed:
      return sum(fd is not None for fd in (self._fd, self._previous))

  def close(self) -> None:
    with self._changed:
      self._closed = True
      fds = (self._fd, self._previous)
      self._fd, self._previous, self._mapped = None, None, None
      self._changed.notify_all()
    for fd in fds:
      if fd is not None:
        os.close(fd)


class BroadcastService:
  """What a broadcast node serves: over courier to every host, and over its
  descriptor socket to readers and publishers of its own host."""

  def __init__(self, node: str, secret: bytes):
    self._node = node
    self._secret = secret
    self._what = f"broadcast {node}"
    self.versions = Versions(self._what)
    self._files = pool.FilePool(layout.MEMFD_NAME)  # for publishers on other hosts
    self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self._listener.bind("\0launchpad-broadcast-" + os.urandom(12).hex())
    self._listener.listen(128)
    self.fd_address = protocol.UNIX_PREFIX + "@" + self._listener.getsockname()[1:].decode()
    self._lock = threading.Lock()
    self._connections: set[socket.socket] = set()
    self._closed = False
    self._stopped = threading.Event()
    self._acceptor = accept_loop.Acceptor(f"broadcast node {node}", self._serve, self._stopped)
    self._acceptor.listen(self._listener, f"{node}-broadcast-accept")

  # Courier methods.

  def where(self) -> tuple[str, str]:
    """(host id, descriptor socket address): callers of the same host use the socket."""
    return host_id(), self.fd_address

  def publish(self, params: Any) -> int:
    """Publishes from another host: the node writes a file of its own."""
    file = layout.write(params, self._what, self._files.take)
    file.unlock()
    try:
      held = layout.hold(file.fd, self._what)
    finally:
      self._files.give_back(file)
    version, retired = self.versions.put(held)
    if retired is not None:
      os.close(retired)
    return version

  def fetch(self, have: int, min_version: int, timeout: float | None) -> tuple[int, int, Any]:
    """(status, version, params) for a caller on another host; params is None
    unless the status is OK."""
    status, version, fd = self.versions.get(min_version, timeout)
    if fd is not None:
      os.close(fd)
    if status != wire.OK:
      return status, version, None
    if version == have:
      return wire.SAME, version, None
    params = self.versions.params(version)
    return (
      (wire.OK, version, params) if params is not None else self.fetch(have, version + 1, timeout)
    )

  def live_versions(self) -> int:
    """How many versions this node keeps open: the newest once published,
    and the one before it once there are two."""
    return self.versions.live()

  # The descriptor socket.

  @property
  def shed(self) -> int:
    """Connections closed in their handshake to free descriptors (accept_loop)."""
    return self._acceptor.shed

  def _serve(self, sock: socket.socket) -> None:
    with self._lock:
      if self._closed:
        sock.close()
        return
      self._connections.add(sock)
    try:
      if wire.peer_uid(sock) != os.getuid():
        return
      deadline = Deadline(HANDSHAKE_SECONDS, f"the handshake of {self._what}")
      try:
        accepted = protocol.server_handshake(sock, self._secret, deadline)
      finally:
        self._acceptor.done(sock)
      if not accepted:
        return
      while self._request(sock):
        pass
    except (OSError, EOFError, ValueError, TimeoutError):
      pass  # the peer went away (or died mid-request): nothing of it is kept
    finally:
      with self._lock:
        self._connections.discard(sock)
      sock.close()

  def _request(self, sock: socket.socket) -> bool:
    data, fd = wire.receive(sock, wire.REQUEST.size, None, "reading a request")
    op, have, min_version, wait_ms = wire.REQUEST.unpack(data)
    if op == wire.PUT and fd is not None:
      try:
        held = layout.hold(fd, self._what)
      except errors.LaunchpadError:
        wire.send(sock, wire.REPLY.pack(wire.REFUSED, 0))
        return True
      finally:
        os.close(fd)
      version, retired = self.versions.put(held)
      try:
        wire.send(sock, wire.REPLY.pack(wire.OK if version else wire.CLOSED, version))
      finally:
        if retired is not None:
          os.close(retired)  # frees its memory unless a reader still maps it
      return True
    if fd is not None:
      os.close(fd)
    if op != wire.GET:
      return False
    timeout = None if wait_ms == wire.NO_LIMIT_MS else wait_ms / 1000
    status, version, fd = self.versions.get(min_version, timeout)
    if status == wire.OK and version == have:
      status = wire.SAME
    try:
      wire.send(sock, wire.REPLY.pack(status, version), fd if status == wire.OK else None)
    finally:
      if fd is not None:
        os.close(fd)
    return True

  def close(self) -> None:
    """Ends waits (CLOSED), closes the socket and every connection, and the newest version."""
    with self._lock:
      self._closed = True
      connections = list(self._connections)
    self._stopped.set()
    self.versions.close()
    self._files.close()
    accept_loop.wake(self._listener)  # wakes the accept loop, which then ends
    self._listener.close()
    for sock in connections:
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass

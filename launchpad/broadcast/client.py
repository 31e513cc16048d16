"""The client a broadcast node's handle dereferences to.

    version = client.publish(params)                 # the learner, once per version
    version, params = client.latest()                # an actor: the newest there is
    version, params = client.wait_newer(version, 5)  # an actor: the next one

On the node's host, versions travel as memfds over its descriptor socket: a
publisher writes its version once, into a file of its own that no one reads
any more (pool.py), and a reader maps it read-only, so its arrays are views
shared with every other reader of the host. On
another host ($LAUNCHPAD_HOST, another machine or network namespace) the
same calls go through courier and carry the pickled parameters.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from typing import Any

from launchpad import errors, timeouts
from launchpad.broadcast import layout, pool, wire
from launchpad.courier import protocol
from launchpad.courier.client import Client
from launchpad.host_identity import host_id
from launchpad.timeouts import Deadline

# How long a reply may take beyond the wait the caller asked for.
REPLY_MARGIN_SECONDS = 30.0


class BroadcastClient:
  """Publishes versions of parameters, and reads the newest.

  Versions are numbered 1, 2, ... by the node in the order they are
  published. The client keeps the newest version it returned (so asking
  again costs no copy and no mapping) until it returns a newer one; the
  file of a version is written again once no reader holds its arrays and
  the node has two newer ones (service.py): a publishing client keeps the
  files of its last versions (pool.py) until it closes or is collected.
  """

  def __init__(self, courier: Client, secret: bytes, node: str):
    self._courier = courier
    self._secret = secret
    self._node = node
    self._what = f"broadcast {node}"
    # Connections to the node's descriptor socket no call is using. Not one
    # per thread: a courier server may serve each call on a new thread (it
    # hands a connection on when a call takes long), and each new thread's
    # connection would cost the node an accept and a handshake.
    self._idle: list[socket.socket] = []
    self._lock = threading.Lock()
    self._where: tuple[str, str] | None = None
    self._same = False  # whether the node is on this host, once _where is known
    self._held: tuple[int, Any] = (0, None)
    # The files of this publisher's versions, written again once free.
    self._files = pool.FilePool(layout.MEMFD_NAME)
    weakref.finalize(self, self._files.close)

  def __reduce__(self):
    return BroadcastClient, (self._courier, self._secret, self._node)

  def __repr__(self) -> str:
    return f"<BroadcastClient of {self._node}>"

  def publish(self, params: Any, timeout: timeouts.Timeout = None) -> int:
    """Makes `params` (a nested structure of numpy arrays and plain values)
    the newest version; returns its number. The arrays are copied once, so
    the caller may change them afterwards."""
    seconds = timeouts.validate(timeout, f"the timeout of {self._what}.publish")
    if not self._same_host(seconds):
      return self._courier.with_timeout(seconds).publish(params)
    file = layout.write(params, self._what, self._files.take)
    file.unlock()
    try:
      status, version, _ = self._call(wire.PUT, 0, 0, None, seconds, file.fd)
    except BaseException:
      file.close()
      self._files.close()  # the node is gone or unreachable: its memory too
      raise
    self._files.give_back(file)
    if status == wire.CLOSED:
      self._files.close()
      raise errors.ProgramStoppedError(f"{self._what} stopped before the version was published.")
    return version

  def latest(
    self, min_version: int | None = None, timeout: timeouts.Timeout = None
  ) -> tuple[int, Any]:
    """(version, params) of the newest version, once there is one numbered
    `min_version` or more (the first one, by default).

    Arrays in params are read-only. CallTimeoutError, naming the node, if
    no such version is published within `timeout` seconds (None: no limit).
    """
    if min_version is not None and (
      isinstance(min_version, bool) or not isinstance(min_version, int)
    ):
      raise TypeError(
        f"{self._what}.latest: min_version must be an int or None, got {min_version!r}."
      )
    seconds = timeouts.validate(timeout, f"the timeout of {self._what}.latest")
    wanted = max(min_version or 1, 1)
    have, params = self._held
    if self._same_host(seconds):
      status, version, fd = self._call(wire.GET, have, wanted, seconds, seconds)
      if fd is not None:
        try:
          params = layout.read(fd, self._what)
        finally:
          os.close(fd)
    else:
      courier = self._courier.with_timeout(
        None if seconds is None else seconds + REPLY_MARGIN_SECONDS
      )
      status, version, fetched = courier.fetch(have, wanted, seconds)
      params = fetched if status == wire.OK else params
    if status == wire.TIMEOUT:
      raise errors.CallTimeoutError(
        f"{self._what}: no version >= {wanted} was published within {seconds:g} s (the newest "
        f"is {version or 'none'}); check that the publisher runs, or wait longer."
      )
    if status == wire.CLOSED:
      raise errors.ProgramStoppedError(f"{self._what} stopped while {self._node} was waited for.")
    with self._lock:
      if version > self._held[0]:
        self._held = (version, params)
    return version, params

  def wait_newer(self, version: int, timeout: timeouts.Timeout = None) -> tuple[int, Any]:
    """(version, params) of the first version newer than `version`."""
    return self.latest(version + 1, timeout)

  def live_versions(self) -> int:
    """How many versions the node keeps open (1 once anything is published)."""
    return self._courier.live_versions()

  def close(self) -> None:
    """Frees what this client holds for publishing (its version files) and
    its idle connections to the node. It stays usable: a later call
    connects again, a later publish makes files again."""
    self._files.close()
    with self._lock:
      idle, self._idle = self._idle, []
    for sock in idle:
      sock.close()

  def _same_host(self, seconds: float | None) -> bool:
    if self._where is None:
      where = self._courier.with_timeout(seconds).where()
      self._same, self._where = where[0] == host_id(), where  # host_id stats /proc: 10 us
    return self._same

  def _call(
    self,
    op: int,
    have: int,
    wanted: int,
    wait: float | None,
    seconds: float | None,
    fd: int | None = None,
  ) -> tuple[int, int, int | None]:
    """One request on an idle connection (or a new one): (status, version,
    fd or None)."""
    total = None if seconds is None else seconds + REPLY_MARGIN_SECONDS
    deadline = Deadline(total, f"{self._what}: {'publish' if op == wire.PUT else 'latest'}")
    sock = self._connection(deadline)
    wait_ms = wire.NO_LIMIT_MS if wait is None else int(wait * 1000)
    try:
      wire.send(sock, wire.REQUEST.pack(op, have, wanted, wait_ms), fd)
      data, received = wire.receive(sock, wire.REPLY.size, deadline, "waiting for the reply")
    except BaseException as e:
      sock.close()  # a request may be half done on it
      if isinstance(e, (OSError, EOFError)):
        raise errors.ConnectionLostError(
          f"{self._what}: the connection to the node broke ({e}); it may have stopped or restarted."
        ) from e
      raise
    with self._lock:
      self._idle.append(sock)
    status, version = wire.REPLY.unpack(data)
    if status == wire.REFUSED:
      raise errors.LaunchpadError(
        f"{self._what} refused the published file: it was not sealed against resizing, or "
        "was still being written."
      )
    return status, version, received

  def _connection(self, deadline: Deadline) -> socket.socket:
    """An idle connection, taken out of the idle ones, or a new one."""
    with self._lock:
      if self._idle:
        return self._idle.pop()
    address = self._where[1]
    sock = protocol.connect(address, deadline)
    try:
      protocol.client_handshake(sock, self._secret, address, deadline)
    except BaseException:
      sock.close()
      raise
    return sock

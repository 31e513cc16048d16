"""The client a broadcast node's handle dereferences to.

    version = client.publish(params)                 # the learner, once per version
    version, params = client.latest()                # an actor: the newest there is
    version, params = client.wait_newer(version, 5)  # an actor: the next one

On the node's host, versions travel as sealed memfds over its descriptor
socket: a publisher writes its version once, and a reader maps it read-only,
so its arrays are views shared with every other reader of the host. On
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
from launchpad.broadcast import layout, spare, wire
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
  memory of a version is freed once no reader holds its arrays and the node
  has two newer ones (service.py). A publishing client keeps a spare file
  for its next version (spare.py) until it closes or is collected.
  """

  def __init__(self, courier: Client, secret: bytes, node: str):
    self._courier = courier
    self._secret = secret
    self._node = node
    self._what = f"broadcast {node}"
    self._local = threading.local()
    self._lock = threading.Lock()
    self._where: tuple[str, str] | None = None
    self._same = False  # whether the node is on this host, once _where is known
    self._held: tuple[int, Any] = (0, None)
    # The pages of this publisher's next version, allocated after each publish.
    self._spare = spare.Spare(layout.MEMFD_NAME)
    weakref.finalize(self, self._spare.close)

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
    fd = layout.write(params, self._what, lambda size: self._spare.take(size, seconds))
    try:
      size = os.fstat(fd).st_size
      status, version, _ = self._call(wire.PUT, 0, 0, None, seconds, fd)
    finally:
      os.close(fd)
    if status == wire.CLOSED:
      raise errors.ProgramStoppedError(f"{self._what} stopped before the version was published.")
    self._spare.prepare(size)
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
    """Frees what this client holds for publishing (its spare file) and this
    thread's connection to the node. It stays usable: a later call connects
    again, a later publish prepares a spare again."""
    self._spare.release()
    self._drop()

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
    """One request on this thread's connection: (status, version, fd or None)."""
    total = None if seconds is None else seconds + REPLY_MARGIN_SECONDS
    deadline = Deadline(total, f"{self._what}: {'publish' if op == wire.PUT else 'latest'}")
    sock = self._connection(deadline)
    wait_ms = wire.NO_LIMIT_MS if wait is None else int(wait * 1000)
    try:
      wire.send(sock, wire.REQUEST.pack(op, have, wanted, wait_ms), fd)
      data, received = wire.receive(sock, wire.REPLY.size, deadline, "waiting for the reply")
    except (OSError, EOFError, errors.CallTimeoutError) as e:
      self._drop()
      if isinstance(e, errors.CallTimeoutError):
        raise
      raise errors.ConnectionLostError(
        f"{self._what}: the connection to the node broke ({e}); it may have stopped or restarted."
      ) from e
    status, version = wire.REPLY.unpack(data)
    if status == wire.REFUSED:
      raise errors.LaunchpadError(f"{self._what} refused the published file: it was not sealed.")
    return status, version, received

  def _connection(self, deadline: Deadline) -> socket.socket:
    sock = getattr(self._local, "sock", None)
    if sock is None:
      address = self._where[1]
      sock = protocol.connect(address, deadline)
      try:
        protocol.client_handshake(sock, self._secret, address, deadline)
      except BaseException:
        sock.close()
        raise
      self._local.sock = sock
    return sock

  def _drop(self) -> None:
    sock = getattr(self._local, "sock", None)
    self._local.sock = None
    if sock is not None:
      sock.close()

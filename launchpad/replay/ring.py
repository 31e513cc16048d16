"""A stream's ring: batch slots in one memfd that a same-host server fills and its learner reads.

Over a socket a sampled batch is copied four times: the server stacks its
rows into one array, the kernel copies that into the socket and out again
into the learner's memory. On one host the server can instead stack the rows
straight into memory the learner maps, and send only which slot they are in:

- The learner's stream (`Reader`) binds an abstract Unix socket of a random
  name and sends it, with a random token, along with each sample call
  (`Reader.request`) until the ring arrives.
- The server (`Rings`), at the first such call, makes a memfd of
  `slots` slots of one batch each, maps it writable, seals it so that nobody
  else can ever write, grow or shrink it (F_SEAL_FUTURE_WRITE: the server's
  own mapping stays writable), connects to the learner's socket and passes
  the descriptor with the token (SCM_RIGHTS). The learner maps it read-only.
- Each call then takes a free slot, stacks the rows into it and replies
  with the slot number and where each column lies; the learner's arrays are
  read-only views of the slot. The slot comes back when the learner drops
  every array of the batch (a weakref.finalize on the slot's owner object),
  and the server hears of it with the stream's next call.
- With no slot free (a learner that keeps its batches), a batch that does
  not fit, or no ring (another host: the server cannot reach the learner's
  socket), the batch travels in the reply as before, so nothing waits.

Lifetime: the socket the descriptor came over stays open while the stream
does; the server watches it and drops the ring when it closes (the stream's
close, or the learner's death). Nothing has a name in /dev/shm, and a memfd
is freed with its last descriptor and mapping, so neither side's SIGKILL
leaves one behind: the learner's mapping lives as long as its arrays.
"""

from __future__ import annotations

import array
import collections
import fcntl
import hmac
import logging
import math
import mmap
import os
import re
import socket
import struct
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from launchpad import errors, memfd
from launchpad.replay import stacking

log = logging.getLogger(__name__)

# Slots beyond max_in_flight_batches: the batch the learner holds, the one it
# just dropped (its return goes with the next call) and some slack.
EXTRA_SLOTS = 4
# No ring is larger: a stream of larger batches gets fewer slots, or none.
MAX_RING_BYTES = 1 << 30
MAX_SLOTS = 1024
# How long a learner waits for the ring's descriptor the server says it sent.
RECEIVE_SECONDS = 10.0
# Each column of a slot starts at a multiple of this (a cache line).
ALIGNMENT = 64
SOCKET_PREFIX = "launchpad-ring-"
MEMFD_NAME = "launchpad-replay-ring"
# The server's mapping stays writable; nobody may write, grow or shrink it otherwise.
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | 0x0010 | fcntl.F_SEAL_SEAL  # 0x10: FUTURE_WRITE
_NAME = re.compile(rf"{SOCKET_PREFIX}[0-9a-f]{{32}}")
_TOKEN_BYTES = 16
# token, slot bytes, slots
_HEADER = struct.Struct(f"<{_TOKEN_BYTES}sQI")

# column, dtype (as its `str`, which pickles in a fraction of a dtype's time), row shape, offset
Layout = list[tuple[str, str, tuple[int, ...], int]]


def layout(
  specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], rows: int, start: int = 0
) -> tuple[Layout, int]:
  """Where each column of `rows` stacked items lies in a slot from `start`, and where they end."""
  placed: Layout = []
  offset = start
  for column, (dtype, shape) in specs.items():
    placed.append((column, dtype.str, shape, offset))
    size = rows * dtype.itemsize * math.prod(shape)
    offset += -(-size // ALIGNMENT) * ALIGNMENT
  return placed, offset


class Ring:
  """The server's side of one stream's ring: its writable mapping and free slots."""

  def __init__(self, mapping: mmap.mmap, slot_bytes: int, slots: int, sock: socket.socket):
    self.mapping = mapping
    self.slot_bytes = slot_bytes
    self.slots = slots
    self.sock = sock  # closes when the learner's stream does
    # Slots free, the latest given back last: taken first, as the most likely still in cache.
    self.free = list(range(slots))

  def write(self, slot: int, placed: Layout, columns: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Stacks each column's rows into its place in `slot`."""
    start = slot * self.slot_bytes
    for column, dtype, shape, offset in placed:
      rows = columns[column]
      count = len(rows) * math.prod(shape)
      out = np.frombuffer(self.mapping, dtype, count, start + offset)
      stacking.stack_into(rows, out.reshape(len(rows), *shape))

  def copy(self, slot: int, placed: Layout, arrays: Mapping[str, np.ndarray]) -> None:
    """Copies each column's stacked array into its place in `slot`."""
    start = slot * self.slot_bytes
    for column, dtype, _, offset in placed:
      array = arrays[column]
      out = np.frombuffer(self.mapping, dtype, array.size, start + offset).reshape(array.shape)
      np.copyto(out, array)


class Rings:
  """A server's rings, one per stream that asked for one, by stream id (thread safe)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._rings: dict[int, Ring] = {}
    self._closed = False

  def __len__(self) -> int:
    with self._lock:
      return len(self._rings)

  def take(self, request: Any, batch_bytes: int) -> tuple[Ring, int] | None:
    """A free slot of the ring of the stream of `request` (Reader.request), or None.

    Frees the slots the request returns first; makes the ring if the stream
    has none and says where to send it. None (the batch goes in the reply)
    when no slot is free, the batch is larger than a slot, or there is no
    ring: the learner is on another host, or it cannot be made.
    """
    stream, name, token, slots, returned = _check(request)
    with self._lock:
      ring = self._rings.get(stream)
      if ring is None and name is not None and not self._closed:
        ring = self._open(stream, name, token, slots, batch_bytes)
      if ring is None:
        return None
      ring.free.extend(s for s in returned if 0 <= s < ring.slots and s not in ring.free)
      if batch_bytes > ring.slot_bytes or not ring.free:
        return None
      return ring, ring.free.pop()

  def close(self) -> None:
    """Drops every ring (their watchers end); later requests get none."""
    with self._lock:
      self._closed = True
      rings = list(self._rings.values())
    for ring in rings:
      _shutdown(ring.sock)

  def _open(self, stream: int, name: str, token: bytes, slots: int, slot_bytes: int) -> Ring | None:
    """(lock held) Makes a ring and sends it to the learner's socket; None if that fails."""
    slots = min(slots, MAX_RING_BYTES // max(slot_bytes, 1))
    if slots < 1 or slot_bytes < 1:
      return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    fd = -1
    try:
      sock.setblocking(False)  # a full backlog or a missing socket: no ring, never a wait
      sock.connect("\0" + name)
      fd = memfd.create(MEMFD_NAME, slot_bytes * slots)
      mapping = mmap.mmap(fd, slot_bytes * slots)
      fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
      header = _HEADER.pack(token, slot_bytes, slots)
      rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
      sock.sendmsg([header], rights, socket.MSG_NOSIGNAL)
    except OSError as e:  # another host, a stream already closed, no memory or descriptors
      log.debug("replay stream %x: no shared ring (%s); batches travel in replies", stream, e)
      sock.close()
      return None
    finally:
      if fd >= 0:
        os.close(fd)  # the mapping and the learner's copy keep the memory
    ring = self._rings[stream] = Ring(mapping, slot_bytes, slots, sock)
    watcher = threading.Thread(
      target=self._watch, args=(stream, ring), name="replay-ring", daemon=True
    )
    watcher.start()
    return ring

  def _watch(self, stream: int, ring: Ring) -> None:
    """Drops the ring when the learner's end of its socket closes (or close() shuts it)."""
    sock = ring.sock
    sock.setblocking(True)
    try:
      while sock.recv(64):
        pass  # the learner sends nothing; any byte is ignored
    except OSError:
      pass
    with self._lock:
      if self._rings.get(stream) is ring:
        del self._rings[stream]
    sock.close()
    # The mapping goes with the last reference: a call writing into it holds one.


def _check(request: Any) -> tuple[int, str | None, bytes, int, list[int]]:
  """A Reader.request() as sent; ValueError naming what is wrong."""
  if not isinstance(request, tuple | list) or len(request) != 5:
    raise ValueError(f"expected a stream's ring request (5 fields), got {request!r}")
  stream, name, token, slots, returned = request
  if not isinstance(stream, int) or not isinstance(token, bytes) or len(token) != _TOKEN_BYTES:
    raise ValueError(f"bad ring request: stream id {stream!r}, token {token!r}")
  if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
    raise ValueError(f"bad ring request: socket name {name!r} is not a stream's")
  if not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
    raise ValueError(f"bad ring request: slots must be 1..{MAX_SLOTS}, got {slots!r}")
  if not isinstance(returned, list | tuple) or not all(isinstance(s, int) for s in returned):
    raise ValueError(f"bad ring request: returned slots {returned!r}")
  return stream, name, token, slots, list(returned)


def _shutdown(sock: socket.socket) -> None:
  try:
    sock.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass  # already closed


class _Slot:
  """The owner of one batch's arrays: numpy views of a slot hang from it, read-only.

  When the last of them goes, its finalizer gives the slot back.
  """

  def __init__(self, ring: np.ndarray, address: int, size: int):
    self.ring = ring  # keeps the mapping
    self.__array_interface__ = {
      "data": (address, True),
      "shape": (size,),
      "typestr": "|u1",
      "version": 3,
    }


class Reader:
  """The learner's side of a stream's ring (thread safe).

  Args:
    table: the stream's table, for errors.
    slots: the slots to ask for (max_in_flight_batches + EXTRA_SLOTS).
  """

  def __init__(self, table: str, slots: int):
    self.table = table
    self.stream_id = int.from_bytes(os.urandom(8), "little") >> 1
    self._token = os.urandom(_TOKEN_BYTES)
    self._slots = min(slots, MAX_SLOTS)
    self._name = SOCKET_PREFIX + os.urandom(16).hex()
    self._listener: socket.socket | None = socket.socket(
      socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
    )
    self._listener.bind("\0" + self._name)
    self._listener.listen(1)
    self._lock = threading.Lock()
    self._sock: socket.socket | None = None
    self._ring: np.ndarray | None = None  # the read-only mapping, as bytes
    self._slot_bytes = 0
    self._returned: collections.deque[int] = collections.deque()  # appended by finalizers
    self._closed = False

  @property
  def mapped(self) -> bool:
    """True once the server's ring arrived."""
    return self._ring is not None

  def request(self) -> tuple:
    """What a sample call carries: the stream, where to send a ring (until it came), returns."""
    returned = []
    while self._returned:
      returned.append(self._returned.popleft())
    name = None if self._ring is not None or self._closed else self._name
    return (self.stream_id, name, self._token, self._slots, returned)

  def arrays(self, slot: int, rows: int, *layouts: Layout) -> list[dict[str, np.ndarray]]:
    """The columns of a batch in `slot`, one dict per layout: read-only views
    that give the slot back when the last of them is dropped."""
    ring = self._ring if self._ring is not None else self._receive()
    owner = _Slot(ring, ring.ctypes.data + slot * self._slot_bytes, self._slot_bytes)
    weakref.finalize(owner, self._returned.append, slot).atexit = False
    base = np.asarray(owner)
    found = []
    for placed in layouts:
      columns = {}
      for column, dtype, shape, offset in placed:
        size = rows * np.dtype(dtype).itemsize * math.prod(shape)
        columns[column] = base[offset : offset + size].view(dtype).reshape(rows, *shape)
      found.append(columns)
    return found

  def close(self) -> None:
    """Closes the sockets: the server drops the ring. Arrays already taken stay valid."""
    with self._lock:
      self._closed = True
      for sock in (self._listener, self._sock):
        if sock is not None:
          sock.close()
      self._listener = self._sock = None
      self._ring = None

  def _receive(self) -> np.ndarray:
    """Takes the ring the server sent to the listener; maps it read-only."""
    with self._lock:
      if self._ring is not None:
        return self._ring
      if self._closed:
        raise errors.ClientClosedError(f"replay stream of table {self.table!r} is closed")
      try:
        self._ring = self._accept()
      except (OSError, EOFError) as e:
        raise errors.ConnectionLostError(
          f"replay stream of table {self.table!r}: the server said it shared a ring of batch "
          f"slots, but it did not arrive ({e}); the stream cannot read its batches. Close it and "
          "open a new one."
        ) from e
      self._listener.close()
      self._listener = None
      return self._ring

  def _accept(self) -> np.ndarray:
    self._listener.settimeout(RECEIVE_SECONDS)
    sock, _ = self._listener.accept()
    try:
      sock.settimeout(RECEIVE_SECONDS)
      data, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, 1)
      try:
        if len(data) != _HEADER.size or len(fds) != 1 or flags & socket.MSG_CTRUNC:
          raise EOFError("the ring's message was cut short")
        token, slot_bytes, slots = _HEADER.unpack(data)
        if not hmac.compare_digest(token, self._token):
          raise EOFError("the ring came with a wrong token")
        if memfd.seals(fds[0]) & SEALS != SEALS:
          raise EOFError("the ring is not a sealed memfd")
        if os.fstat(fds[0]).st_size < slot_bytes * slots:
          raise EOFError("the ring is shorter than its slots")
        view = memfd.map_read_only(fds[0], slot_bytes * slots)
      finally:
        for fd in fds:
          os.close(fd)
    except BaseException:
      sock.close()
      raise
    self._sock = sock
    self._slot_bytes = slot_bytes
    return np.frombuffer(view, np.uint8)

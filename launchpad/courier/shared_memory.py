"""Large out-of-band buffers between processes of one host, as sealed memfds.

Over a Unix socket (the path same-host callers take) a buffer of at least
`threshold()` bytes does not travel as bytes: the sender copies it into a
sealed memfd (launchpad/memfd.py) and passes the descriptor; the receiver
maps it read-only and its arrays are built on the mapping, with no copy.
That replaces the socket's two copies (into the kernel and out of it, a
socket buffer at a time) with one, and the receiver's memory is the page
cache the sender filled.

Descriptors go over a channel of their own, a SOCK_SEQPACKET socket pair the
client makes when it connects and hands one end of to the server (`offer`,
`accept`); the server answers whether it took it (one out of descriptors
declines, and that connection streams every buffer). They cannot share the
frame stream: a reader that takes frames many at a time with plain reads
would drop the descriptors of a frame it reads ahead into, and reading every frame with `recvmsg` would cost small
calls. So a frame that carries shared buffers is flagged (protocol.SHARED),
its shared buffers' lengths are marked (FD_BIT), and their descriptors are
queued on the channel before the frame is written, under the connection's
write lock: when the reader comes to the frame, they are waiting.

TCP and TLS connections have no channel; neither can pass descriptors.
Neither side keeps anything that outlives it: the sender closes its memfds
once they are sent, the receiver its descriptors once mapped, and the kernel
frees a segment with its last descriptor or mapping, a SIGKILLed process's
included. Nothing has a name in /dev/shm.
"""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import struct
from collections.abc import Callable

from launchpad import memfd
from launchpad.courier import bounded_io
from launchpad.timeouts import Deadline

log = logging.getLogger(__name__)

# The buffers of at least this many bytes travel as memfds. Below it the
# socket is faster: the receiver's memory comes from malloc's free lists,
# already paged in, while each memfd is new pages; from 32 MiB, glibc's
# largest mmap threshold, the socket's receiver gets new pages too, and an
# echo through memfds took 0.6x the time (bench/shared_memory.py; docs/performance.md).
DEFAULT_THRESHOLD = 32 << 20
THRESHOLD_VARIABLE = "LAUNCHPAD_SHARED_MEMORY_BYTES"
# A shared buffer's entry in a frame's length table has this bit set.
FD_BIT = 1 << 63
MEMFD_NAME = "launchpad-courier"
# Descriptors per channel message (the kernel takes at most 253 in one).
MAX_FDS = 250
# call id, number of descriptors in the message
_MESSAGE = struct.Struct("<IH")
_OFFER = b"S"
_TAKEN = b"Y"
_DECLINED = b"N"
_SENDING = "while sending shared memory"


def threshold() -> int:
  """The smallest buffer that travels in shared memory, in bytes: $LAUNCHPAD_SHARED_MEMORY_BYTES,
  else DEFAULT_THRESHOLD. 'off' keeps every buffer in the socket stream."""
  value = os.environ.get(THRESHOLD_VARIABLE, "").strip()
  if not value:
    return DEFAULT_THRESHOLD
  if value.lower() == "off":
    return FD_BIT  # larger than any buffer
  try:
    parsed = int(value)
  except ValueError:
    parsed = -1
  if parsed < 1:
    raise ValueError(
      f"${THRESHOLD_VARIABLE} is {value!r}: set it to a number of bytes of at least 1 (buffers "
      "that large go through shared memory between processes of one host), or to 'off'."
    )
  return parsed


class Channel:
  """One connection's descriptor channel, and the threshold its sender uses."""

  def __init__(self, sock: socket.socket, min_bytes: int):
    self.sock = sock
    self.threshold = min_bytes

  def shares(self, lengths: list[int]) -> bool:
    """True if a buffer of these lengths goes through shared memory."""
    return max(lengths) >= self.threshold

  def send(
    self, call_id: int, lengths: list[int], buffers: list[memoryview], deadline: Deadline | None
  ) -> list[memoryview]:
    """Copies each buffer of at least `threshold` bytes into a sealed memfd
    and queues the descriptors for the peer; marks their `lengths` (in place)
    with FD_BIT and returns the buffers that still go in the frame. A buffer
    for which no memfd can be made (no memory, no descriptors) stays in it."""
    fds: list[int] = []
    inline: list[memoryview] = []
    try:
      for i, buffer in enumerate(buffers):
        if lengths[i] >= self.threshold:
          try:
            fds.append(memfd.sealed_copy(MEMFD_NAME, buffer.cast("B")))
            lengths[i] |= FD_BIT
            continue
          except OSError:
            pass  # sent in the frame instead
        inline.append(buffer)
      for start in range(0, len(fds), MAX_FDS):
        self._send_message(call_id, fds[start : start + MAX_FDS], deadline)
    finally:
      for fd in fds:
        os.close(fd)  # the peer's copies, queued on the channel, keep the memory
    return inline

  def _send_message(self, call_id: int, fds: list[int], deadline: Deadline | None) -> None:
    data = [_MESSAGE.pack(call_id, len(fds))]
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    if deadline is None or deadline.at is None:
      self.sock.sendmsg(data, rights, socket.MSG_NOSIGNAL)
      return
    while True:
      try:
        self.sock.sendmsg(data, rights, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        return
      except BlockingIOError:  # the peer has not read the descriptors of earlier frames
        bounded_io.wait(self.sock, select.POLLOUT, deadline, _SENDING)

  def receive(
    self, call_id: int, lengths: tuple[int, ...], take: Callable[[int], bytearray]
  ) -> list:
    """The buffers of a SHARED frame: marked ones mapped from the descriptors
    the channel holds for it, the others read by `take(n)` from the frame.

    Raises EOFError (the connection must close) if the descriptors are
    missing, are not sealed memfds or are shorter than their buffers.
    """
    fds = self._receive_fds(call_id, sum(1 for n in lengths if n & FD_BIT))
    buffers = []
    try:
      for n in lengths:
        if n & FD_BIT:
          buffers.append(_map(fds.pop(0), n & ~FD_BIT))
        else:
          buffers.append(take(n))
    except BaseException:
      # A frame cut short: its mappings go now. The error's traceback keeps
      # this frame, and whoever keeps the error (a caller, a log) would keep them.
      buffers.clear()
      raise
    finally:
      for fd in fds:
        os.close(fd)
    return buffers

  def _receive_fds(self, call_id: int, count: int) -> list[int]:
    fds: list[int] = []
    try:
      while len(fds) < count:
        try:
          data, ancillary, flags, _ = self.sock.recvmsg(
            _MESSAGE.size, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_DONTWAIT
          )
        except BlockingIOError:
          data, ancillary, flags = b"", [], 0
        before = len(fds)
        for level, kind, payload in ancillary:
          if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        if len(data) != _MESSAGE.size or flags & socket.MSG_CTRUNC:
          raise EOFError("the shared memory of a frame did not arrive with it")
        sent_for, number = _MESSAGE.unpack(data)
        if sent_for != call_id or len(fds) > count:
          raise EOFError(f"shared memory for call {sent_for} came with the frame of call {call_id}")
        if number != len(fds) - before:
          raise EOFError("a frame's shared memory came with fewer descriptors than it named")
    except BaseException:
      for fd in fds:
        os.close(fd)
      raise
    return fds

  def close(self) -> None:
    self.sock.close()


def _map(fd: int, length: int) -> memoryview:
  """A read-only mapping of a received memfd's first `length` bytes; closes `fd`."""
  try:
    if not memfd.is_sealed(fd):
      raise EOFError("the peer sent shared memory that is not a sealed memfd")
    if os.fstat(fd).st_size < length:
      raise EOFError("the peer sent shared memory shorter than its buffer")
    return memfd.map_read_only(fd, length)
  finally:
    os.close(fd)


def offer(sock: socket.socket, deadline: Deadline) -> Channel | None:
  """The client's side of a channel for a connection that just passed its
  handshake: on a Unix socket, makes a socket pair, sends the server one end
  and waits for its answer. None on TCP and TLS, which cannot pass
  descriptors, and where the server declined."""
  if sock.family != socket.AF_UNIX:
    return None
  min_bytes = threshold()  # a bad setting raises before any descriptor exists
  mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
  try:
    with theirs:
      _send_byte(sock, _OFFER, deadline, [theirs.fileno()])
    bounded_io.wait(sock, select.POLLIN, deadline, "while setting up shared memory")
    answer = sock.recv(1, socket.MSG_DONTWAIT)
    if answer not in (_TAKEN, _DECLINED):
      raise EOFError("the server did not answer the offer of a shared-memory channel")
  except BaseException:
    mine.close()
    raise
  if answer == _DECLINED:
    mine.close()
    return None
  return Channel(mine, min_bytes)


def accept(sock: socket.socket, deadline: Deadline) -> Channel | None:
  """The server's side of `offer`: takes the channel end the client sent right
  after the handshake, on a Unix socket, and says so. None on TCP and TLS, and
  where this process has no descriptor free for it (the kernel drops it): the
  client is told, and the connection goes on without. EOFError if what came
  is not an offer."""
  if sock.family != socket.AF_UNIX:
    return None
  bounded_io.wait(sock, select.POLLIN, deadline, "while setting up shared memory")
  data, fds, flags, _ = socket.recv_fds(sock, len(_OFFER), 1, socket.MSG_DONTWAIT)
  channel = socket.socket(fileno=fds[0]) if fds else None
  if data == _OFFER and channel is None and flags & socket.MSG_CTRUNC:
    log.info("no descriptor free for a connection's shared-memory channel; it streams")
    _send_byte(sock, _DECLINED, deadline)
    return None
  if data != _OFFER or channel is None or channel.type != socket.SOCK_SEQPACKET:
    if channel is not None:
      channel.close()
    raise EOFError("the client did not send a shared-memory channel after the handshake")
  try:
    _send_byte(sock, _TAKEN, deadline)
  except BaseException:
    channel.close()
    raise
  # A bad setting does not stop the server: its callers' own setting is
  # checked where they run.
  try:
    min_bytes = threshold()
  except ValueError as e:
    log.error("%s; this server uses %d bytes", e, DEFAULT_THRESHOLD)
    min_bytes = DEFAULT_THRESHOLD
  return Channel(channel, min_bytes)


def _send_byte(
  sock: socket.socket, byte: bytes, deadline: Deadline, fds: list[int] | None = None
) -> None:
  """One byte of the channel's setup (with descriptors, if any). The socket
  buffer of a fresh connection is empty, so once writable it does not block."""
  bounded_io.wait(sock, select.POLLOUT, deadline, "while setting up shared memory")
  if fds:
    socket.send_fds(sock, [byte], fds, socket.MSG_DONTWAIT)
  else:
    sock.send(byte, socket.MSG_DONTWAIT)


def close_connection(sock: socket.socket, channel: Channel | None) -> None:
  """Closes a courier connection's socket and its descriptor channel, if any."""
  sock.close()
  if channel is not None:
    channel.close()

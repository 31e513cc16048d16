"""Socket reads and writes bounded by a Deadline, at no extra system call.

Courier sockets stay in blocking mode: a Python socket with a timeout polls
before every read and write, one system call more on every call of the fast
path. With a deadline instead:

- Small reads and writes (a frame's header and pickle, a handshake) are
  first tried without waiting (MSG_DONTWAIT); only when one would block does
  the caller poll, for the time the deadline leaves. Data that is already
  there costs what it costs without a deadline, and a peer that dribbles
  bytes cannot stretch the whole past the deadline: each wait gets only what
  is left.
- Large buffers (`recv_all`, `send_parts` once a write would block) go in
  one blocking system call that sleeps in the kernel until the buffer is
  done (MSG_WAITALL for reads), with the socket's kernel timeout
  (SO_RCVTIMEO, SO_SNDTIMEO) set to the time left, and reset after. That is
  fewer system calls than a poll per socket buffer's worth, and it needs the
  socket to be the calling thread's alone while it lasts, as a synchronous
  connection is.

Without a deadline (None, or one of no timeout) they are plain blocking calls.
"""

from __future__ import annotations

import select
import socket
import struct

from launchpad.timeouts import Deadline

_TIMEVAL = struct.Struct("@ll")


def wait(sock: socket.socket, events: int, deadline: Deadline, what: str) -> None:
  """Waits until `sock` is ready for `events` (select.POLLIN or POLLOUT);
  the deadline's CallTimeoutError, saying `what` was going on, once it passes."""
  remaining = deadline.remaining()
  if remaining is not None and remaining <= 0:
    raise deadline.error(what)
  poller = select.poll()
  poller.register(sock, events)
  if not poller.poll(None if remaining is None else remaining * 1000):
    raise deadline.error(what)


def recv_into(
  sock: socket.socket, view: memoryview, deadline: Deadline | None, what: str, drained: bool = False
) -> int:
  """Reads at least one byte into `view` (0 at the end of the stream).

  `drained`: the caller just found nothing to read, so this waits before
  reading instead of trying first.
  """
  if deadline is None or deadline.at is None:
    return sock.recv_into(view)
  if drained:
    wait(sock, select.POLLIN, deadline, what)
  while True:
    try:
      return sock.recv_into(view, 0, socket.MSG_DONTWAIT)
    except BlockingIOError:
      wait(sock, select.POLLIN, deadline, what)


def recv_all(sock: socket.socket, view: memoryview, deadline: Deadline | None, what: str) -> int:
  """Reads until `view` is full or the stream ends; returns how much was read.

  With a deadline, the socket's receive timeout is set for the time: the
  socket must be the calling thread's alone.
  """
  have = 0
  timed = deadline is not None and deadline.at is not None
  try:
    while have < view.nbytes:
      if timed:
        _set_timeout(sock, socket.SO_RCVTIMEO, deadline, what)
      try:
        got = sock.recv_into(view[have:], 0, socket.MSG_WAITALL)
      except BlockingIOError:  # the kernel timeout passed: the deadline is checked next
        continue
      if not got:
        break
      have += got
  finally:
    if timed:
      _clear_timeout(sock, socket.SO_RCVTIMEO)
  return have


def send_all(sock: socket.socket, data, deadline: Deadline | None, what: str) -> None:
  """Writes all of `data` (any buffer; small ones, as a handshake's)."""
  if deadline is None or deadline.at is None:
    sock.sendall(data)
    return
  view = memoryview(data).cast("B")
  while True:
    try:
      sent = sock.send(view, socket.MSG_DONTWAIT)
    except BlockingIOError:
      sent = 0
    if sent == view.nbytes:
      return
    view = view[sent:]
    wait(sock, select.POLLOUT, deadline, what)  # the socket's buffer is full


def send_parts(
  sock: socket.socket, parts: list[memoryview], deadline: Deadline | None, what: str, iov_max: int
) -> None:
  """Writes the byte views `parts` in order, `iov_max` at a time, from their
  own memory. With a deadline, a first write is tried without waiting; if
  the socket's buffer fills, the rest is written blocking, with the socket's
  send timeout set for the time left (the socket must be this thread's alone)."""
  trying = deadline is not None and deadline.at is not None  # without waiting, first
  timed = False  # the socket's send timeout is set
  first = 0
  try:
    while first < len(parts):
      if timed:
        _set_timeout(sock, socket.SO_SNDTIMEO, deadline, what)
      end = min(first + iov_max, len(parts))
      try:
        sent = sock.sendmsg(parts[first:end], (), socket.MSG_DONTWAIT if trying else 0)
      except BlockingIOError:
        sent = 0
      while first < end and sent >= parts[first].nbytes:
        sent -= parts[first].nbytes
        first += 1
      if sent:
        parts[first] = parts[first][sent:]
      if trying and first < end:  # the socket's buffer is full: block, bounded by the kernel
        trying, timed = False, True
  finally:
    if timed:
      _clear_timeout(sock, socket.SO_SNDTIMEO)


def _set_timeout(sock: socket.socket, option: int, deadline: Deadline, what: str) -> None:
  """Sets the socket's kernel timeout `option` to the time the deadline
  leaves (at least a microsecond: zero would mean none), or raises its error."""
  remaining = deadline.remaining()
  if remaining <= 0:
    raise deadline.error(what)
  seconds = int(remaining)
  sock.setsockopt(
    socket.SOL_SOCKET, option, _TIMEVAL.pack(seconds, max(1, int((remaining - seconds) * 1e6)))
  )


def _clear_timeout(sock: socket.socket, option: int) -> None:
  try:
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(0, 0))
  except OSError:
    pass  # closed meanwhile

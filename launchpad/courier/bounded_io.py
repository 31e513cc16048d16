"""Socket reads and writes bounded by a Deadline, at no extra system call.

Courier sockets stay in blocking mode: a Python socket with a timeout polls
before every read and write, one system call more on every call of the fast
path. With a deadline, each read or write is first tried without waiting
(MSG_DONTWAIT); only when it would block does the caller poll, for the time
the deadline leaves. So data that is already there costs what it costs
without a deadline, and a peer that dribbles bytes cannot stretch the whole
operation past the deadline (each wait gets only what is left).

Without a deadline (None, or one of no timeout) they are the plain blocking
calls.
"""

from __future__ import annotations

import select
import socket

from launchpad.timeouts import Deadline


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

  `drained`: the caller just found nothing more to read (a read came back
  short), so this waits before reading instead of trying first.
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


def send_all(sock: socket.socket, data, deadline: Deadline | None, what: str) -> None:
  """Writes all of `data` (any buffer)."""
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
  """Writes the byte views `parts` in order, `iov_max` at a time, from their own memory."""
  dontwait = 0 if deadline is None or deadline.at is None else socket.MSG_DONTWAIT
  first = 0
  while first < len(parts):
    try:
      sent = sock.sendmsg(parts[first : first + iov_max], (), dontwait)
    except BlockingIOError:
      sent = -1
    full = sent < 0
    while sent > 0 and first < len(parts) and sent >= parts[first].nbytes:
      sent -= parts[first].nbytes
      first += 1
    if sent > 0:
      parts[first] = parts[first][sent:]
      full = True  # a partial write: the socket's buffer is full
    if full and dontwait:
      wait(sock, select.POLLOUT, deadline, what)

"""The messages of a broadcast's descriptor socket.

Readers and publishers on the node's host talk to it over an abstract Unix
socket (no file-system name, so nothing to clean up after a SIGKILL). After
courier's handshake (both sides prove they know the program secret), each
request is one fixed-size message and each reply one, with a memfd attached
(SCM_RIGHTS) where there is one:

- GET(have, min_version, wait): the newest version once it is >= min_version
  (waiting up to `wait` seconds); SAME if it is the `have` the caller holds.
- PUT, with a memfd sealed against resizing: the file becomes the next
  version; the reply carries its number.
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct

from launchpad.timeouts import Deadline

GET, PUT = 1, 2
OK, SAME, TIMEOUT, CLOSED, REFUSED = 1, 2, 3, 4, 5
# op, caller's version, minimum version, wait in milliseconds (NO_LIMIT_MS: no limit)
REQUEST = struct.Struct("<BqqQ")
# status, version
REPLY = struct.Struct("<Bq")
NO_LIMIT_MS = 2**64 - 1


def send(sock: socket.socket, data: bytes, fd: int | None = None) -> None:
  """Sends one message (and `fd` with its first byte); the messages are a
  few bytes, so the socket's buffer always has room for them."""
  fds = [fd] if fd is not None else []
  sent = socket.send_fds(sock, [data], fds)
  if sent < len(data):
    sock.sendall(data[sent:])


def receive(
  sock: socket.socket, size: int, deadline: Deadline | None, what: str
) -> tuple[bytes, int | None]:
  """One message of `size` bytes and the descriptor that came with it, if
  any; EOFError if the peer closed first, the deadline's CallTimeoutError if
  it passes. Extra descriptors (a confused peer) are closed."""
  data = b""
  fd: int | None = None
  while len(data) < size:
    remaining = None if deadline is None else deadline.remaining()
    if remaining is not None:
      poller = select.poll()
      poller.register(sock, select.POLLIN)
      if not poller.poll(remaining * 1000):
        if fd is not None:
          os.close(fd)
        raise deadline.error(what)
    try:
      chunk, fds, _, _ = socket.recv_fds(sock, size - len(data), 4)
    except BaseException:
      if fd is not None:
        os.close(fd)
      raise
    for extra in fds:
      if fd is None:
        fd = extra
      else:
        os.close(extra)
    if not chunk:
      if fd is not None:
        os.close(fd)
      raise EOFError("the peer closed the connection")
    data += chunk
  return data, fd


def peer_uid(sock: socket.socket) -> int:
  """The user id of the process at the other end of a Unix socket."""
  creds = array.array("i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
  return creds[1]

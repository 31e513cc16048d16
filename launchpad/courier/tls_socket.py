"""Courier connections over TLS (see launchpad/tls.py for what TLS protects).

The TLS state lives in an `ssl.SSLObject` over memory buffers, and this
module moves the bytes between those buffers and the socket itself:

- OpenSSL objects must not be used by two threads at once, and courier
  connections are (a reader thread, and callers or handlers writing). Every
  call into the SSLObject holds a lock; the socket is read and written
  outside it, so a writer never waits for the network under the lock a
  reader needs, or the other way round.
- Reads take up to READ_BYTES of ciphertext per system call and decrypt
  every whole record in it into the caller's buffer. (Measured against an
  SSLSocket used the same way: the same throughput and round trip; large
  arrays are bound by encryption itself, about 1 GB/s per direction here.)

`TlsSocket` offers what the courier protocol uses of a plain socket.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading

from launchpad.courier import bounded_io
from launchpad.timeouts import Deadline
from launchpad.tls import TlsConfig

# Ciphertext read per system call, and plaintext encrypted per lock hold.
READ_BYTES = 256 * 1024
WRITE_BYTES = 256 * 1024


def wrap_client(sock: socket.socket, tls: TlsConfig, deadline: Deadline) -> TlsSocket:
  """Runs the TLS handshake as the client on a connected TCP socket, by `deadline`."""
  return TlsSocket(sock, tls.client_context, deadline, server_hostname=tls.server_name)


def wrap_server(sock: socket.socket, tls: TlsConfig, deadline: Deadline) -> TlsSocket:
  """Runs the TLS handshake as the server on an accepted TCP socket, by `deadline`."""
  return TlsSocket(sock, tls.server_context, deadline, server_side=True)


class TlsSocket:
  """A TLS connection that one reader and several writers may use at once.

  Reads come from one thread at a time (as courier's do); writes from any.
  The TCP socket stays in blocking mode; deadlines bound the handshake and
  writes (`bounded_io`), and reads with MSG_DONTWAIT let callers bound theirs.
  """

  def __init__(
    self, sock: socket.socket, context: ssl.SSLContext, deadline: Deadline, **wrap_kwargs
  ):
    self._sock = sock
    self._incoming = ssl.MemoryBIO()
    self._outgoing = ssl.MemoryBIO()
    self._tls = context.wrap_bio(self._incoming, self._outgoing, **wrap_kwargs)
    self._lock = threading.Lock()  # the SSLObject and its buffers
    # Keeps each write's records together and in order (sendmsg holds it
    # across its parts' sendall calls, hence reentrant).
    self._write_lock = threading.RLock()
    self._raw = bytearray(READ_BYTES)
    self.family = sock.family
    self._handshake(deadline)

  def _handshake(self, deadline: Deadline) -> None:
    while True:
      with self._lock:
        try:
          self._tls.do_handshake()
          done = True
        except ssl.SSLWantReadError:
          done = False
      self._flush(deadline)
      if done:
        return
      while True:
        try:
          received = self._receive(socket.MSG_DONTWAIT)
          break
        except BlockingIOError:
          bounded_io.wait(self._sock, select.POLLIN, deadline, "during the TLS handshake")
      if not received:
        raise ConnectionError("the peer closed the connection during the TLS handshake")

  def fileno(self) -> int:
    return self._sock.fileno()

  def recv(self, n: int) -> bytes:
    buffer = bytearray(n)
    return bytes(buffer[: self.recv_into(buffer)])

  def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
    """Reads at least one byte into `buffer` (0 at the end of the stream);
    with MSG_DONTWAIT, BlockingIOError when nothing has arrived."""
    view = memoryview(buffer).cast("B")
    view = view[: nbytes or view.nbytes]
    while True:
      got = self._decrypt_into(view)
      if got is not None:
        return got
      if not self._receive(flags):
        return 0

  def sendall(self, data, deadline: Deadline | None = None, what: str = "while sending") -> None:
    """Writes all of `data`; past `deadline`, its CallTimeoutError (the TLS
    stream is then cut in the middle of a record: close the connection)."""
    view = memoryview(data).cast("B")
    with self._write_lock:
      for start in range(0, view.nbytes, WRITE_BYTES):
        with self._lock:
          self._tls.write(view[start : start + WRITE_BYTES])
          records = self._outgoing.read()
        bounded_io.send_all(self._sock, records, deadline, what)

  def sendmsg(self, parts, deadline: Deadline | None = None, what: str = "while sending") -> int:
    """Sends every part in turn (there is no gathered write through TLS)."""
    total = 0
    with self._write_lock:
      for part in parts:
        self.sendall(part, deadline, what)
        total += memoryview(part).nbytes
    return total

  def setsockopt(self, *args) -> None:
    self._sock.setsockopt(*args)

  def shutdown(self, how: int) -> None:
    self._sock.shutdown(how)

  def close(self) -> None:
    self._sock.close()

  def _decrypt_into(self, view: memoryview) -> int | None:
    """Decrypts what has arrived into `view`; None if nothing whole has."""
    got = 0
    with self._lock:
      try:
        while got < view.nbytes:
          got += self._tls.read(view.nbytes - got, view[got:])
      except ssl.SSLWantReadError:
        pass
      except ssl.SSLZeroReturnError:  # the peer ended the TLS stream
        return got
      answered = self._outgoing.pending  # e.g. a key update to acknowledge
    if answered:
      self._flush()
    return got or None

  def _receive(self, flags: int) -> bool:
    """Reads ciphertext from the socket into the TLS buffer; False at its end."""
    got = self._sock.recv_into(self._raw, READ_BYTES, flags & socket.MSG_DONTWAIT)
    if not got:
      return False
    with self._lock:
      self._incoming.write(memoryview(self._raw)[:got])
    return True

  def _flush(self, deadline: Deadline | None = None) -> None:
    """Sends what the TLS state produced by itself (handshake, alerts)."""
    with self._write_lock:
      with self._lock:
        records = self._outgoing.read()
      if records:
        bounded_io.send_all(self._sock, records, deadline, "during the TLS handshake")

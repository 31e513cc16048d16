"""Courier connections over TLS (see launchpad/tls.py for what TLS protects).

An OpenSSL connection must not be read and written by two threads at once,
and courier connections are (a reader thread, and callers or handlers
writing). `TlsSocket` serialises every OpenSSL call of a connection while
waiting for the network outside the lock, and offers what the protocol
uses of a plain socket.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

from launchpad.tls import TlsConfig

_SLICE_SECONDS = 0.05


def wrap_client(sock: socket.socket, tls: TlsConfig, timeout: float | None) -> TlsSocket:
  """Runs the TLS handshake as the client on a connected TCP socket."""
  return _wrap(tls.client_context, sock, timeout, server_hostname=tls.server_name)


def wrap_server(sock: socket.socket, tls: TlsConfig, timeout: float | None) -> TlsSocket:
  """Runs the TLS handshake as the server on an accepted TCP socket."""
  return _wrap(tls.server_context, sock, timeout, server_side=True)


def _wrap(context: ssl.SSLContext, sock: socket.socket, timeout: float | None, **kw) -> TlsSocket:
  sock.settimeout(timeout)
  wrapped = context.wrap_socket(sock, **kw)
  return TlsSocket(wrapped, timeout)


class TlsSocket:
  """An SSL socket that one reader and several writers may use at once."""

  def __init__(self, sock: ssl.SSLSocket, timeout: float | None):
    sock.setblocking(False)
    self._sock = sock
    self._lock = threading.Lock()
    self._timeout = timeout
    self.family = sock.family

  def settimeout(self, timeout: float | None) -> None:
    self._timeout = timeout

  def fileno(self) -> int:
    return self._sock.fileno()

  def pending(self) -> int:
    """Bytes already decrypted: readable although the socket may not poll so."""
    with self._lock:
      return self._sock.pending()

  def recv(self, n: int) -> bytes:
    buffer = bytearray(n)
    return bytes(buffer[: self.recv_into(buffer)])

  def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
    deadline = self._deadline()
    while True:
      with self._lock:
        try:
          return self._sock.recv_into(buffer, nbytes)
        except ssl.SSLWantReadError:
          event = select.POLLIN
        except ssl.SSLWantWriteError:
          event = select.POLLOUT
        except ssl.SSLZeroReturnError:
          return 0
      if flags & socket.MSG_DONTWAIT:
        raise BlockingIOError
      self._wait(event, deadline)

  def sendall(self, data) -> None:
    view = memoryview(data).cast("B")
    deadline = self._deadline()
    while view.nbytes:
      with self._lock:
        try:
          view = view[self._sock.send(view) :]
          continue
        except ssl.SSLWantWriteError:
          event = select.POLLOUT
        except ssl.SSLWantReadError:
          event = select.POLLIN
      self._wait(event, deadline)

  def sendmsg(self, parts) -> int:
    """Sends every part in turn (OpenSSL has no gathered write)."""
    total = 0
    for part in parts:
      self.sendall(part)
      total += memoryview(part).nbytes
    return total

  def setsockopt(self, *args) -> None:
    self._sock.setsockopt(*args)

  def shutdown(self, how: int) -> None:
    # The plain socket's shutdown: SSLSocket's would drop its SSL state under
    # a reader in another thread.
    socket.socket.shutdown(self._sock, how)

  def close(self) -> None:
    self._sock.close()

  def _deadline(self) -> float | None:
    return None if self._timeout is None else time.monotonic() + self._timeout

  def _wait(self, event: int, deadline: float | None) -> None:
    """Waits for the network, at most one slice: then the caller tries again,
    in case another thread's OpenSSL call took in what this one waits for."""
    poller = select.poll()
    poller.register(self._sock.fileno(), event)
    wait = _SLICE_SECONDS
    if deadline is not None:
      wait = min(wait, deadline - time.monotonic())
      if wait <= 0:
        raise TimeoutError("the TLS connection timed out")
    poller.poll(wait * 1000)

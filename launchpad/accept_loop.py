"""Accepting connections on a listening socket, whatever the process runs out of.

A loop that returns on any `accept()` error stops its listener for good the
first time the process runs out of file descriptors (EMFILE, ENFILE): a
flood of idle connections then leaves a server that never serves again.
`Acceptor` keeps accepting instead. Each accepted socket is pending until
its handshake ends (`done`); when accepting fails for a lack of descriptors,
memory or threads, the oldest pending sockets are shed (shut down, so the
thread in their handshake closes them and frees their descriptors), the
loop waits a moment (ACCEPT_BACKOFF_SECONDS, doubling up to
MAX_ACCEPT_BACKOFF_SECONDS while it lasts) and accepts again. Connections
that finished their handshake are never shed. The loop ends only when its
`stopped` event is set or its listener is gone.

Courier servers, broadcast nodes' descriptor sockets and the Slurm lease
listener all accept through it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# After accept() fails for lack of resources, it is tried again after this
# long, doubling up to the maximum while it keeps failing.
ACCEPT_BACKOFF_SECONDS = 0.001
MAX_ACCEPT_BACKOFF_SECONDS = 0.1
# Each such failure sheds this fraction (at least one) of the pending
# connections, oldest first.
SHED_FRACTION = 8
# Warnings about it are at most this often.
SHED_WARNING_SECONDS = 10.0
# accept() errors about one connection that went away before it was taken.
_ABORTED = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENETUNREACH}
# accept() errors that mean the listener itself is gone.
_LISTENER_GONE = {errno.EBADF, errno.EINVAL, errno.ENOTSOCK}


class Acceptor:
  """Accepts on any number of listeners until `stopped` is set.

  Args:
    label: who accepts, for logs ("node learner[0]", "the Slurm leases").
    serve: runs in a thread of its own for each accepted socket; it owns the
      socket (closes it), and calls `done(sock)` once the handshake ended.
    stopped: set when accepting must end (the owner also shuts its
      listeners down, which wakes a blocked accept()).
    start_thread: starts a thread running `serve(sock)`; default: a daemon
      thread. It may raise RuntimeError when no thread can be started.
  """

  def __init__(
    self,
    label: str,
    serve: Callable[[socket.socket], None],
    stopped: threading.Event,
    start_thread: Callable[[Callable[[socket.socket], None], socket.socket], None] | None = None,
  ):
    self._label = label
    self._serve = serve
    self._stopped = stopped
    self._start_thread = start_thread or _daemon_thread
    self._lock = threading.Lock()
    # Accepted sockets still in their handshake, oldest first (the order of
    # a dict's keys).
    self._pending: dict[socket.socket, None] = {}
    # Pending connections closed to free descriptors, since the start.
    self.shed = 0
    self._warned = -SHED_WARNING_SECONDS  # time.monotonic() of the last warning

  def listen(self, listener: socket.socket, name: str) -> threading.Thread:
    """Starts accepting on `listener` in a daemon thread called `name`."""
    thread = threading.Thread(target=self.run, args=(listener,), name=name, daemon=True)
    thread.start()
    return thread

  def done(self, sock: socket.socket) -> None:
    """`sock`'s handshake ended (either way): it is no longer shed."""
    with self._lock:
      self._pending.pop(sock, None)

  def wake_pending(self) -> None:
    """Shuts down every pending socket; their threads close them (a stop)."""
    with self._lock:
      pending = list(self._pending)
    for sock in pending:
      wake(sock)

  def run(self, listener: socket.socket) -> None:
    """Accepts until stopped or the listener is gone; a lack of descriptors
    or threads sheds pending connections and backs off instead of ending it."""
    backoff = 0.0
    while not self._stopped.is_set():
      try:
        sock, _ = listener.accept()
      except OSError as e:
        if self._stopped.is_set():
          return
        if e.errno in _ABORTED:
          continue
        if e.errno in _LISTENER_GONE:
          log.error("%s: stopped accepting connections: %s", self._label, e)
          return
        backoff = self._back_off(e, backoff)
        continue
      with self._lock:
        self._pending[sock] = None
      try:
        self._start_thread(self._serve, sock)
      except RuntimeError as e:  # no thread can be started
        self.done(sock)
        sock.close()
        backoff = self._back_off(e, backoff)
        continue
      backoff = 0.0

  def _back_off(self, error: BaseException, backoff: float) -> float:
    """Sheds the oldest pending connections and waits before the next
    accept; returns the next wait."""
    with self._lock:
      count = max(1, len(self._pending) // SHED_FRACTION)
      shed = list(itertools.islice(self._pending, count))
      for sock in shed:
        del self._pending[sock]
      self.shed += len(shed)
    for sock in shed:
      wake(sock)  # the thread in its handshake closes it
    if time.monotonic() - self._warned >= SHED_WARNING_SECONDS:
      self._warned = time.monotonic()
      log.warning(
        "%s: cannot accept connections (%s); closed %d that had not authenticated "
        "(oldest first) and keeps trying. Raise the limit of open files (ulimit -n) "
        "if more connections are needed.",
        self._label,
        error,
        len(shed),
      )
    backoff = backoff or ACCEPT_BACKOFF_SECONDS
    self._stopped.wait(backoff)
    return min(2 * backoff, MAX_ACCEPT_BACKOFF_SECONDS)


def wake(sock: socket.socket) -> None:
  """Ends the connection for its peer and wakes the thread blocked on it;
  that thread closes it (closing here could let the descriptor be reused
  under it). On a listener, wakes a blocked accept()."""
  try:
    sock.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass


def _daemon_thread(serve: Callable[[socket.socket], None], sock: socket.socket) -> None:
  threading.Thread(
    target=serve, args=(sock,), name=f"{threading.current_thread().name}-conn", daemon=True
  ).start()

"""A publisher's spare memfd: the pages of its next version, allocated ahead.

A fresh memfd gets its pages as a publish writes into it, and allocating
them (zeroing included) is most of the cost: 64 MB took 25-35 ms to write
into a fresh memfd here, 11-17 ms into one whose pages `posix_fallocate`
had allocated. So after each publish a publisher allocates a file of the
same size in a background thread, and its next publish writes into that
(truncated or grown if the version's size differs), then seals it as before.

The cost: between publishes, a publisher holds one version's worth of
allocated memory more. It is mapped by no one, so it shows in no process's
PSS, only in the host's shared memory (Shmem in /proc/meminfo). Only a
publish that succeeds prepares one (a publish takes the spare there is, so
one that finds the node stopped leaves none), and the client's close, or
its collection, frees it.
"""

from __future__ import annotations

import os
import threading

from launchpad import memfd


class Spare:
  """At most one prepared memfd, allocated by a background thread."""

  def __init__(self, name: str):
    self._name = name
    self._lock = threading.Lock()
    self._fd: int | None = None
    self._allocating: threading.Thread | None = None
    # Bumped by release(): a file allocated for an older generation is closed.
    self._generation = 0
    self._closed = False

  def take(self, size: int, timeout: float | None) -> int:
    """A memfd of `size` bytes that can be sealed; the caller owns the fd.

    The spare if there is one, waiting up to `timeout` seconds (None: no
    limit) for one being allocated; else a new memfd.
    """
    with self._lock:
      allocating = self._allocating
    if allocating is not None:
      allocating.join(timeout)  # what is left of work the caller would do anyway
    with self._lock:
      fd, self._fd = self._fd, None
    if fd is None:
      return memfd.create(self._name, size)
    try:
      if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    except BaseException:
      os.close(fd)
      raise
    return fd

  def prepare(self, size: int) -> None:
    """Starts allocating a spare of `size` bytes, unless there is one (or one
    is being allocated)."""
    with self._lock:
      if self._closed or self._fd is not None or self._allocating is not None:
        return
      self._allocating = threading.Thread(
        target=self._allocate,
        args=(size, self._generation),
        name=f"{self._name}-spare",
        daemon=True,
      )
      self._allocating.start()

  def release(self) -> None:
    """Closes the spare, now or (if being allocated) once it is."""
    with self._lock:
      fd, self._fd = self._fd, None
      self._generation += 1
    if fd is not None:
      os.close(fd)

  def close(self) -> None:
    """Releases the spare for good: no more are prepared."""
    with self._lock:
      self._closed = True
    self.release()

  def _allocate(self, size: int, generation: int) -> None:
    fd = None
    try:
      fd = memfd.create(self._name, size)
      os.posix_fallocate(fd, 0, size)
    except OSError:
      if fd is not None:
        os.close(fd)
      fd = None  # no memory or descriptor to spare: the next publish allocates as it writes
    finally:
      with self._lock:
        self._allocating = None
        if fd is not None and generation == self._generation:
          self._fd, fd = fd, None
    if fd is not None:
      os.close(fd)

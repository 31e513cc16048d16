"""A publisher's version files, written again once no one maps them.

Writing a version into a file whose pages are already allocated and mapped
is a memcpy; into fresh pages it is also their allocation and zeroing, and
on a virtual machine that hands freed memory back to its host (free page
reporting) every fresh page costs the host a fault as well. Measured here
for 64 MB: 6-8 ms into a mapped file, 15-20 ms by pwrite into pages
allocated ahead, 30-60 ms into fresh pages, and 200-300 ms into pages the
host had taken back (docs/design.md). So a publisher keeps the files of its
last versions, each mapped writable, and writes each new version into one
that no one reads any more.

Who reads a file is the kernel's to know: each holder of a version has a
shared `flock` on an open file description of its own (the node on the one
it serves readers from, each reader on the one its mapping keeps, see
layout.py). The publisher writes into a file only while it holds the
exclusive lock of its own description, which it can take only once no
shared lock is left. A reader that is SIGKILLed loses its lock with its
descriptors, so its file becomes reusable; a reader that never drops a
version keeps that one file from reuse, and the publisher writes into
another.

Files are sealed against growing and shrinking, so a reader's mapping can
never lose pages under it; they are not sealed against writes, since their
pages are written again. A version's size decides its file: a file of
another size is dropped once free.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading

from launchpad import memfd

# What a version's file is sealed against: a reader's mapping never loses pages.
SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
# Files a publisher keeps: the node holds the newest two versions, readers
# the newest until they fetch the next; one more is free to write.
MAX_FILES = 4


class VersionFile:
  """One memfd of a fixed size (> 0: a version has a header), mapped
  writable by its publisher."""

  def __init__(self, name: str, size: int):
    self.size = size
    self.fd = memfd.create(name, size)
    try:
      fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      self._mapping = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
    except BaseException:
      os.close(self.fd)
      raise

  def lock(self) -> bool:
    """Takes the right to write; False while anyone holds a version in it."""
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    return True

  def write(self, data: memoryview, offset: int) -> None:
    """Copies the byte view `data` in at `offset` (the file must be locked)."""
    with memoryview(self._mapping) as view:
      view[offset : offset + data.nbytes] = data

  def unlock(self) -> None:
    """Written: the node may take its shared lock (and hand the file out)."""
    fcntl.flock(self.fd, fcntl.LOCK_UN)

  def close(self) -> None:
    """Drops the publisher's mapping and descriptor; the pages live on as
    long as a reader maps them."""
    self._mapping.close()
    os.close(self.fd)


class FilePool:
  """The version files of one publisher: at most MAX_FILES between publishes.

  A file is out of the pool while a publish writes it, so two threads'
  publishes never share one (their flocks, of one description, would not
  tell them apart).
  """

  def __init__(self, name: str):
    self._name = name
    self._lock = threading.Lock()
    self._files: list[VersionFile] = []  # least recently written first

  def take(self, size: int) -> VersionFile:
    """A locked file of `size` bytes, out of the pool until given back: a
    free one of the pool, or a new one."""
    with self._lock:
      chosen = None
      for file in list(self._files):
        if chosen is None and file.size == size and file.lock():
          chosen = file
        elif file.size != size and file.lock():
          self._drop(file)  # free, and of a size this publisher no longer writes
      if chosen is not None:
        self._files.remove(chosen)
        return chosen
    return VersionFile(self._name, size)

  def give_back(self, file: VersionFile) -> None:
    """Returns a written (and unlocked) file, to be written again once free."""
    with self._lock:
      self._files.append(file)
      if len(self._files) > MAX_FILES:
        self._drop(self._files[0])  # its readers keep their pages; it is not written again

  def close(self) -> None:
    """Drops every file: nothing of the pool is left but what readers map."""
    with self._lock:
      for file in list(self._files):
        self._drop(file)

  def _drop(self, file: VersionFile) -> None:
    self._files.remove(file)
    file.close()

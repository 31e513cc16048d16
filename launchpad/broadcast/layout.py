"""One version of a broadcast's parameters in a memfd, and back.

Layout: a header (magic, pickle length, number of buffers), a table of
(offset, length) for each out-of-band buffer, the pickle (protocol 5), then
the buffers, each at a 64-byte aligned offset. Contiguous numpy arrays are
pickled out of band, so a reader's arrays are read-only views into its
mapping of the file: one copy of the parameters per host, whatever the
number of readers.

A version's file is its publisher's (pool.py), written again once no one
holds the version. Holding is a shared `flock`: `hold` gives the node a
read-only description of its own, locked, and `read` gives each reader
one, locked, that its mapping keeps (Python's mmap keeps a duplicate of
the descriptor it maps), so the lock goes when the last array of the
version goes, or with the process. The publisher writes only under the
exclusive lock, so no one reads a version while it is written. The file
is sealed against growing and shrinking, so a mapping never loses pages.
A memfd has no name in any file system: it is freed when the last
descriptor and the last mapping of it go, so nothing is left behind when a
process is SIGKILLed.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

from launchpad import errors, memfd
from launchpad.broadcast.pool import SEALS, VersionFile

MAGIC = b"LPB2"
HEADER = struct.Struct("<4sQQ")  # magic, pickle length, number of buffers
ENTRY = struct.Struct("<QQ")  # offset, length of one out-of-band buffer
ALIGN = 64
MEMFD_NAME = "launchpad-broadcast"


def _aligned(n: int) -> int:
  return (n + ALIGN - 1) // ALIGN * ALIGN


def write(params: Any, what: str, take: Callable[[int], VersionFile]) -> VersionFile:
  """A file holding `params`, still locked for writing (pool.py).

  `what` names the broadcast in errors ("broadcast params[0]"); `take(size)`
  gives the file to fill, of that size and locked.
  """
  buffers: list[pickle.PickleBuffer] = []
  try:
    meta = pickle.dumps(params, protocol=5, buffer_callback=buffers.append)
  except Exception as e:
    raise errors.SerializationError(
      f"{what}: the parameters cannot be pickled ({type(e).__name__}: {e}); publish a nested "
      "structure of numpy arrays and plain Python values."
    ) from e
  raws = [b.raw() for b in buffers]
  offset = _aligned(HEADER.size + ENTRY.size * len(raws) + len(meta))
  table = []
  for raw in raws:
    table.append((offset, raw.nbytes))
    offset = _aligned(offset + raw.nbytes)
  file = take(offset)
  try:
    head = HEADER.pack(MAGIC, len(meta), len(raws)) + b"".join(ENTRY.pack(*e) for e in table)
    file.write(memoryview(head + meta), 0)
    for raw, (at, _) in zip(raws, table, strict=True):
      file.write(raw.cast("B"), at)
  except BaseException:
    file.close()
    raise
  return file


def read_seals(fd: int, what: str) -> None:
  """Raises unless `fd` is a memfd sealed so that it can never grow or shrink."""
  try:
    seals = memfd.seals(fd)
  except OSError as e:
    raise errors.LaunchpadError(f"{what}: received a descriptor that is not a memfd ({e}).") from e
  if seals & SEALS != SEALS:
    raise errors.LaunchpadError(
      f"{what}: received a parameter file that is not sealed against resizing (seals "
      f"{seals:#x}); only launchpad's broadcast clients may publish to it."
    )


def hold(fd: int, what: str) -> int:
  """A read-only descriptor of the version file `fd`, on a description of
  its own with a shared lock: the file is not written again while it is open
  (or while any duplicate of it is, a reader's in flight included)."""
  read_seals(fd, what)
  held = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
  try:
    fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BaseException as e:
    os.close(held)
    if isinstance(e, BlockingIOError):
      raise errors.LaunchpadError(
        f"{what}: received a parameter file that its publisher is still writing."
      ) from e
    raise
  return held


def read(fd: int, what: str) -> Any:
  """The parameters in the version file `fd`, arrays as read-only views of a
  private mapping that holds the version (module docstring) as long as any
  of them lives. Does not close `fd`."""
  held = hold(fd, what)
  try:
    size = os.fstat(held).st_size
    mapping = mmap.mmap(held, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
  finally:
    os.close(held)  # the mapping keeps a duplicate, and with it the lock
  view = memoryview(mapping)
  magic, meta_length, count = HEADER.unpack_from(view, 0)
  if magic != MAGIC:
    raise errors.LaunchpadError(f"{what}: received a file that is not a broadcast version.")
  table = [ENTRY.unpack_from(view, HEADER.size + ENTRY.size * i) for i in range(count)]
  start = HEADER.size + ENTRY.size * count
  meta = view[start : start + meta_length]
  return pickle.loads(meta, buffers=[view[at : at + length] for at, length in table])

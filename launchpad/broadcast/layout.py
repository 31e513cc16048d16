"""One version of a broadcast's parameters in a sealed memfd, and back.

Layout: a header (magic, pickle length, number of buffers), a table of
(offset, length) for each out-of-band buffer, the pickle (protocol 5), then
the buffers, each at a 64-byte aligned offset. Contiguous numpy arrays are
pickled out of band, so a reader's arrays are read-only views into its
mapping of the file: one copy of the parameters per host, whatever the
number of readers.

The file is sealed (no write, grow or shrink, no further seals) before
anyone else gets its descriptor, so readers may trust it never changes
under them; `read` refuses a file without those seals. A memfd has no name
in any file system: it is freed when the last descriptor and the last
mapping of it go, so nothing is left behind when a process is SIGKILLed.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

from launchpad import errors, memfd

MAGIC = b"LPB1"
HEADER = struct.Struct("<4sQQ")  # magic, pickle length, number of buffers
ENTRY = struct.Struct("<QQ")  # offset, length of one out-of-band buffer
ALIGN = 64
MEMFD_NAME = "launchpad-broadcast"


def _aligned(n: int) -> int:
  return (n + ALIGN - 1) // ALIGN * ALIGN


def fresh(size: int) -> int:
  """A new memfd of `size` zero bytes, for `write`."""
  return memfd.create(MEMFD_NAME, size)


def write(params: Any, what: str, create: Callable[[int], int] = fresh) -> int:
  """A sealed memfd holding `params`; the caller owns (and closes) the fd.

  `what` names the broadcast in errors ("broadcast params[0]"); `create(size)`
  gives the memfd to fill, of that size and not yet sealed (a publisher's
  spare, spare.py).
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
  fd = create(offset)
  try:
    head = HEADER.pack(MAGIC, len(meta), len(raws)) + b"".join(ENTRY.pack(*e) for e in table)
    memfd.write_all(fd, memoryview(head + meta), 0)
    for raw, (at, _) in zip(raws, table, strict=True):
      memfd.write_all(fd, raw.cast("B"), at)
    memfd.seal(fd)
  except BaseException:
    os.close(fd)
    raise
  return fd


def read_seals(fd: int, what: str) -> None:
  """Raises unless `fd` is a memfd sealed so that it can never change."""
  try:
    seals = memfd.seals(fd)
  except OSError as e:
    raise errors.LaunchpadError(f"{what}: received a descriptor that is not a memfd ({e}).") from e
  if seals & memfd.SEALS != memfd.SEALS:
    raise errors.LaunchpadError(
      f"{what}: received a parameter file that is not sealed against writes (seals "
      f"{seals:#x}); only launchpad's broadcast clients may publish to it."
    )


def read(fd: int, what: str) -> Any:
  """The parameters in the sealed memfd `fd`, arrays as read-only views of a
  private mapping that lives as long as any of them. Does not close `fd`."""
  read_seals(fd, what)
  size = os.fstat(fd).st_size
  mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
  view = memoryview(mapping)
  magic, meta_length, count = HEADER.unpack_from(view, 0)
  if magic != MAGIC:
    raise errors.LaunchpadError(f"{what}: received a file that is not a broadcast version.")
  table = [ENTRY.unpack_from(view, HEADER.size + ENTRY.size * i) for i in range(count)]
  start = HEADER.size + ENTRY.size * count
  meta = view[start : start + meta_length]
  return pickle.loads(meta, buffers=[view[at : at + length] for at, length in table])

"""Sealed memfds: memory one process fills, seals, and hands to others by descriptor.

A memfd is a file in memory with no name in any file system: it is freed
when the last descriptor and the last mapping of it go, so nothing is left
behind (no /dev/shm entry) when a process holding one is SIGKILLed. Sealing
it (no write, grow or shrink, no further seals) before anyone else gets its
descriptor lets receivers trust that it never changes under them and never
shrinks under their mapping. The parameter broadcast (broadcast/layout.py)
and courier's same-host transfers (courier/shared_memory.py) build on this.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import weakref

import numpy as np

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL

# Python's mmap keeps a duplicate of the descriptor while it maps (until
# Python 3.13's trackfd), one descriptor per received array; libc's mmap keeps none.
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = (
  ctypes.c_void_p,
  ctypes.c_size_t,
  ctypes.c_int,
  ctypes.c_int,
  ctypes.c_int,
  ctypes.c_int64,
)
_LIBC.munmap.restype = ctypes.c_int
_LIBC.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def create(name: str, size: int) -> int:
  """A new memfd of `size` zero bytes that can be sealed; the caller owns the fd.

  `name` shows in /proc/PID/fd links ("/memfd:NAME") and nowhere else.
  """
  fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
  try:
    os.ftruncate(fd, size)
  except BaseException:
    os.close(fd)
    raise
  return fd


def write_all(fd: int, data: memoryview, offset: int) -> None:
  """Writes all of the byte view `data` at `offset` (the kernel copies it once)."""
  while data.nbytes:
    done = os.pwrite(fd, data, offset)
    data, offset = data[done:], offset + done


def seal(fd: int) -> None:
  """Seals `fd` for good: nobody may write, grow or shrink it again."""
  fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)


def sealed_copy(name: str, data: memoryview) -> int:
  """A sealed memfd holding a copy of the byte view `data`; the caller owns the fd."""
  fd = create(name, data.nbytes)
  try:
    write_all(fd, data, 0)
    seal(fd)
  except BaseException:
    os.close(fd)
    raise
  return fd


def seals(fd: int) -> int:
  """The seals of `fd`; OSError if it is not a memfd (or another sealable file)."""
  return fcntl.fcntl(fd, fcntl.F_GET_SEALS)


def is_sealed(fd: int) -> bool:
  """True if `fd` is a memfd that can never change (all of SEALS)."""
  try:
    return seals(fd) & SEALS == SEALS
  except OSError:
    return False


def map_read_only(fd: int, size: int) -> memoryview:
  """A read-only view of the first `size` (> 0) bytes of `fd`, mapped shared.

  The mapping keeps no descriptor: the caller may close `fd` at once. It is
  unmapped when the last object that refers to it goes (the view, and every
  numpy array or view built on it), so it lives exactly as long as its readers.
  """
  address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
  if address is None or address == _MAP_FAILED:
    error = ctypes.get_errno()
    raise OSError(
      error, f"cannot map a shared memory segment of {size} bytes: {os.strerror(error)}"
    )
  pages = _Pages(address, size)
  weakref.finalize(
    pages, _LIBC.munmap, address, size
  ).atexit = False  # readers may outlive exit hooks
  return memoryview(np.asarray(pages))


class _Pages:
  """The numpy array interface of a read-only mapping: the base object of its arrays."""

  def __init__(self, address: int, size: int):
    self.__array_interface__ = {
      "data": (address, True),  # read-only
      "shape": (size,),
      "typestr": "|u1",
      "version": 3,
    }

"""Checkpoints of a replay server: every table's snapshot in one file.

A checkpoint is `checkpoint_dir/<counter>.ckpt` (a zero-padded counter, one
more than the newest file there): a magic header, the payload's length and
SHA-256, then the pickled payload {"version", "created", "tables": [table
snapshots without their chunks], "chunks": chunk_key -> array}. Chunks that
several tables reference are stored once. Each table's snapshot is
consistent on its own (Table.snapshot()); tables are snapshotted one after
another, not at one instant together.

Writing is atomic: the file is written under a temporary name in the same
directory (`.<counter>.<random>.tmp`), fsynced, then renamed with os.replace
(and the directory fsynced), so a crash leaves either the whole checkpoint
or none. Only the KEEP newest checkpoints are kept. Loading takes the newest
complete file: a truncated or corrupt one (bad header, length or checksum,
or unpicklable) is skipped with a warning naming it, and the next older one
is tried.

Temporary files of interrupted checkpoints: a writer holds an exclusive
flock on its temporary file while it writes it, and the kernel drops the
lock when the writer's process dies, however it dies. So a temporary file
that nobody holds locked is what a crash (SIGKILL, power loss) left behind:
`remove_stale_temp_files` deletes those, and a server calls it when it
starts and after each checkpoint it writes. A checkpoint being written, in
this process or another, is never touched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import pickle
import re
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from launchpad.replay.table import Table

log = logging.getLogger(__name__)

MAGIC = b"LPREPLAY-CKPT-1\n"
_HEADER = struct.Struct(">Q32s")  # payload length, SHA-256 of the payload
FORMAT_VERSION = 1
KEEP = 3
SUFFIX = ".ckpt"
_NAME = re.compile(r"^(\d+)\.ckpt$")
_TEMP_NAME = re.compile(r"^\.\d+\.\w+\.tmp$")  # what write() names its temporary files
# Attempts at a temporary file a concurrent cleanup did not take for stale (see _locked_temp).
_TEMP_ATTEMPTS = 3


class CorruptCheckpointError(ValueError):
  """A checkpoint file is truncated, corrupt or not a checkpoint."""


def _numbered(directory: str) -> list[tuple[int, str]]:
  """(counter, path) of the checkpoint files in `directory`, newest first."""
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  found = []
  for name in names:
    match = _NAME.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name)))
  found.sort(reverse=True)
  return found


def list_checkpoints(directory: str) -> list[str]:
  """The checkpoint files in `directory` (complete or not), newest first."""
  return [path for _, path in _numbered(directory)]


def encode(tables: Iterable[Table]) -> bytes:
  """A checkpoint file's bytes for these tables (chunks shared between tables stored once)."""
  snapshots = []
  chunks: dict[int, Any] = {}
  for table in tables:
    snapshot = table.snapshot()
    chunks.update(snapshot.pop("chunks"))
    snapshots.append(snapshot)
  payload = pickle.dumps(
    {"version": FORMAT_VERSION, "created": time.time(), "tables": snapshots, "chunks": chunks},
    protocol=5,
  )
  return MAGIC + _HEADER.pack(len(payload), hashlib.sha256(payload).digest()) + payload


def decode(blob: bytes) -> dict[str, Any]:
  """The payload of a checkpoint file's bytes; CorruptCheckpointError if incomplete or corrupt."""
  if not blob.startswith(MAGIC):
    raise CorruptCheckpointError("no checkpoint header")
  start = len(MAGIC) + _HEADER.size
  if len(blob) < start:
    raise CorruptCheckpointError("truncated header")
  length, digest = _HEADER.unpack_from(blob, len(MAGIC))
  payload = blob[start:]
  if len(payload) != length:
    raise CorruptCheckpointError(f"payload of {len(payload)} bytes, expected {length} (truncated?)")
  if hashlib.sha256(payload).digest() != digest:
    raise CorruptCheckpointError("checksum mismatch")
  try:
    data = pickle.loads(payload)
  except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
    raise CorruptCheckpointError(f"cannot unpickle: {type(e).__name__}: {e}") from None
  if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
    raise CorruptCheckpointError("unknown checkpoint version")
  return dict(data)


def table_snapshots(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Table name -> full snapshot (with the shared chunks) from a decoded checkpoint."""
  chunks = data["chunks"]
  return {s["name"]: {**s, "chunks": chunks} for s in data["tables"]}


def write(directory: str, tables: Iterable[Table], keep: int = KEEP) -> str:
  """Writes a checkpoint of `tables` atomically; keeps the `keep` newest; returns its path.

  Afterwards it removes the temporary files that interrupted checkpoints
  left (remove_stale_temp_files).
  """
  os.makedirs(directory, exist_ok=True)
  blob = encode(tables)
  existing = _numbered(directory)
  counter = existing[0][0] + 1 if existing else 1
  path = os.path.join(directory, f"{counter:012d}{SUFFIX}")
  fd, tmp = _locked_temp(directory, f".{counter:012d}.")
  try:
    with os.fdopen(fd, "wb") as f:  # closing it drops the lock, after the rename
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
      os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  _fsync_dir(directory)
  for _, old in _numbered(directory)[max(1, keep) :]:
    try:
      os.unlink(old)
    except OSError as e:
      log.warning("replay checkpoint: cannot remove old checkpoint %s: %s", old, e)
  remove_stale_temp_files(directory)
  return path


def remove_stale_temp_files(directory: str) -> list[str]:
  """Deletes the temporary files of interrupted checkpoints in `directory`; returns their paths.

  Only files named as `write` names them, and only those no live writer
  holds (see the module docstring): a checkpoint being written survives.
  """
  try:
    names = [n for n in os.listdir(directory) if _TEMP_NAME.match(n)]
  except FileNotFoundError:
    return []
  removed, nbytes = [], 0
  for name in sorted(names):
    path = os.path.join(directory, name)
    try:
      fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
      continue  # renamed or removed meanwhile
    except OSError as e:
      log.warning("replay checkpoint: cannot open temporary file %s to check it: %s", path, e)
      continue
    try:
      if not _try_lock(fd):
        continue  # a live writer holds it
      size = os.fstat(fd).st_size
      os.unlink(path)  # under the lock, so that no writer takes it up meanwhile
    except FileNotFoundError:
      continue
    except OSError as e:
      log.warning("replay checkpoint: cannot remove stale temporary file %s: %s", path, e)
      continue
    finally:
      os.close(fd)
    removed.append(path)
    nbytes += size
  if removed:
    log.info(
      "replay checkpoint: removed %d temporary files (%d bytes) that interrupted checkpoints "
      "left in %s: %s",
      len(removed),
      nbytes,
      directory,
      ", ".join(os.path.basename(p) for p in removed),
    )
  return removed


def _locked_temp(directory: str, prefix: str) -> tuple[int, str]:
  """A new temporary file in `directory`, open and exclusively flocked: (fd, path).

  A cleanup in another process may open the file between its creation and
  the lock, find it unlocked and delete it: then the file has no name left
  (st_nlink 0) and another one is made.
  """
  for _ in range(_TEMP_ATTEMPTS):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fstat(fd).st_nlink:
      return fd, path
    os.close(fd)
  raise OSError(f"cannot keep a temporary checkpoint file in {directory}: something deletes them")


def _try_lock(fd: int) -> bool:
  """Takes an exclusive flock on `fd` if nobody holds one; False if somebody does."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
      return False
    raise
  return True


def load_latest(directory: str) -> tuple[str, dict[str, Any]] | None:
  """(path, decoded payload) of the newest complete checkpoint, or None if there is none.

  Incomplete or corrupt files are skipped, each with a warning naming it.
  """
  for _, path in _numbered(directory):
    try:
      with open(path, "rb") as f:
        blob = f.read()
      return path, decode(blob)
    except (OSError, CorruptCheckpointError) as e:
      log.warning("replay checkpoint: skipping %s: %s", path, e)
  return None


def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


class PeriodicCheckpointer:
  """A thread that calls `write()` every `every` seconds, and once more at `stop()`."""

  def __init__(self, write_fn: Callable[[], Any], every: float):
    self._write = write_fn
    self._every = every
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="replay-checkpoints", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def request_stop(self) -> None:
    """Asks the thread to write its last checkpoint and end (does not wait)."""
    self._stop.set()

  def stop(self, timeout: float | None = None) -> bool:
    """Stops the thread after its last checkpoint; False if it did not end in `timeout`."""
    self._stop.set()
    if self._thread.ident is not None:
      self._thread.join(timeout)
    return not self._thread.is_alive()

  def _run(self) -> None:
    while not self._stop.wait(self._every):
      self._write_logged()
    self._write_logged()

  def _write_logged(self) -> None:
    try:
      self._write()
    except Exception:
      log.exception("replay checkpoint: writing a checkpoint failed")

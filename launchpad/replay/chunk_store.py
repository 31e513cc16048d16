"""ChunkStore: data stored once, referenced by any number of items and tables.

A chunk is one numpy array: one column of a trajectory over a run of steps
(its first axis is the step axis), identified by a uint64 key. Items do not
hold data; they hold references, per column, to slices of chunks:

    {"obs":    [(chunk_a, slice(3, 8)), (chunk_b, slice(0, 2))],   # 7 steps, shape (7, 84, 84)
     "action": [(chunk_c, slice(3, 10))],                          # 7 steps, a view, no copy
     "reward": [(chunk_d, 4)]}                                     # one step, squeezed: shape ()

A slice keeps the step axis (several slices are concatenated along it); a
lone integer index selects a single step without it. The store counts
references: `put` gives the caller one, every item that references a chunk
holds one (however many of its columns use it), and a chunk's memory is
released when its count reaches zero. So however many items or tables refer
to a step, it is stored once.

How the trajectory writer (writer.py) uses it, through the server:

  1. For each column, buffer steps; when a chunk is complete (or an item
     needs steps not yet chunked), `store.put(key, steps, copy=False)`
     (steps stacked on a first axis): the writer now holds one reference.
  2. Insert items into tables with data refs slicing those chunks; each item
     takes its own reference (the table calls `acquire`).
  3. When no future item can need a chunk (it fell out of the writer's
     history window, or the episode ended), `store.release([key])`. The chunk
     lives on while any item references it, and goes with the last one.

A server shares one ChunkStore between all its tables. Chunks are immutable:
the store marks them read-only and hands out views, so nobody can change
data that others share. Thread-safe; its lock is a leaf (the store never
calls out while holding it), so tables may call it under their own locks.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

ChunkRef = tuple[int, slice | int]
"""(chunk_key, slice) for a run of steps, or (chunk_key, index) for one squeezed step."""

DataRefs = Mapping[str, Sequence[ChunkRef]]
"""An item's data: for each column, the chunk slices it is made of, in order."""

_MAX_KEY = 2**64

_key_source = random.Random(os.urandom(16))


def new_key() -> int:
  """A random uint64, for chunk and item keys (collisions are vanishingly unlikely)."""
  return _key_source.getrandbits(64)


def new_keys(count: int) -> list[int]:
  """`count` random uint64s at once (as `new_key`, for a batch)."""
  if count < 1:
    return []
  raw = _key_source.getrandbits(64 * count).to_bytes(8 * count, "little")
  return np.frombuffer(raw, dtype="<u8").tolist()


def chunk_keys(refs: Mapping[str, Sequence[ChunkRef]]) -> list[int]:
  """The distinct chunks an item's (canonical) references use, in order of first use."""
  if len(refs) == 1:
    (entries,) = refs.values()
    if len(entries) == 1:  # the common item: one column, one run
      return [entries[0][0]]
  return list(dict.fromkeys(key for entries in refs.values() for key, _ in entries))


def check_key(key: Any, what: str = "key") -> int:
  """Returns `key` as an int, or raises ValueError unless it is an integer in [0, 2**64)."""
  if type(key) is int and 0 <= key < _MAX_KEY:
    return key  # the common case, quickly
  if isinstance(key, bool) or not isinstance(key, int | np.integer):
    raise ValueError(f"{what} must be an integer (uint64), got {key!r}")
  value = int(key)
  if not 0 <= value < _MAX_KEY:
    raise ValueError(f"{what} must be in [0, 2**64), got {value}")
  return value


class ColumnSpec(NamedTuple):
  """The dtype and shape a column's references resolve to."""

  dtype: np.dtype
  shape: tuple[int, ...]


def normalize_refs(
  data_refs: Any, lookup: Callable[[int], np.ndarray | None]
) -> tuple[dict[str, tuple[ChunkRef, ...]], dict[str, ColumnSpec]]:
  """Checks an item's data references and puts them in canonical form.

  Canonical: slices with non-negative start < stop and no step, indices
  non-negative. `lookup(chunk_key)` returns the chunk's array or None.

  Returns:
    (canonical refs, the dtype and shape each column resolves to).

  Raises:
    ValueError: naming the column, for a malformed reference, a missing
      chunk, a slice outside its chunk or selecting nothing, or columns that
      join chunks of different dtypes or step shapes.
  """
  if (type(data_refs) is not dict and not isinstance(data_refs, Mapping)) or not data_refs:
    raise ValueError(
      "data must be a non-empty mapping column -> [(chunk_key, slice or index), ...], "
      f"got {data_refs!r}"
    )
  refs: dict[str, tuple[ChunkRef, ...]] = {}
  specs: dict[str, ColumnSpec] = {}
  for column, entries in data_refs.items():
    if not isinstance(column, str):
      raise ValueError(f"column names must be strings, got {column!r}")
    kind = type(entries)  # a list or tuple skips the slower check of an abstract Sequence
    if (
      (kind is not list and kind is not tuple and not isinstance(entries, Sequence))
      or isinstance(entries, str)
      or (len(entries) == 2 and not isinstance(entries[0], tuple | list))
    ):
      raise ValueError(
        f"column {column!r}: expected a list of (chunk_key, slice or index) pairs, got {entries!r}"
      )
    if not entries:
      raise ValueError(f"column {column!r} references no data")
    canonical: list[ChunkRef] = []
    dtype: np.dtype | None = None
    step_shape: tuple[int, ...] = ()
    steps = 0
    squeezed = False
    for entry in entries:
      if not isinstance(entry, tuple | list) or len(entry) != 2:
        raise ValueError(
          f"column {column!r}: each reference must be a (chunk_key, slice or index) pair, "
          f"got {entry!r}"
        )
      chunk_key = check_key(entry[0], f"column {column!r}: chunk key")
      where = entry[1]
      array = lookup(chunk_key)
      if array is None:
        raise ValueError(f"column {column!r} references chunk {chunk_key}, which is not stored")
      length = array.shape[0]
      if isinstance(where, slice):
        if where.step not in (None, 1):
          raise ValueError(f"column {column!r}: slices must have no step, got {where!r}")
        for bound in (where.start, where.stop):
          if bound is None or (type(bound) is int and -length <= bound <= length):
            continue  # the common case, quickly
          if (
            isinstance(bound, bool)
            or not isinstance(bound, int | np.integer)
            or not -length <= bound <= length
          ):
            raise ValueError(
              f"column {column!r}: {where!r} is outside chunk {chunk_key} of {length} steps"
            )
        start, stop, _ = where.indices(length)
        if stop <= start:
          raise ValueError(f"column {column!r}: {where!r} selects no steps of chunk {chunk_key}")
        canonical.append((chunk_key, slice(start, stop)))
        steps += stop - start
      elif isinstance(where, int | np.integer) and not isinstance(where, bool):
        index = int(where)
        if not -length <= index < length:
          raise ValueError(
            f"column {column!r}: index {index} is outside chunk {chunk_key} of {length} steps"
          )
        if len(entries) != 1:
          raise ValueError(
            f"column {column!r}: an index (one squeezed step) must be the column's only "
            "reference; join steps with slices"
          )
        canonical.append((chunk_key, index % length))
        squeezed = True
      else:
        raise ValueError(
          f"column {column!r}: expected a slice or an index into chunk {chunk_key}, got {where!r}"
        )
      if dtype is None:
        dtype, step_shape = array.dtype, array.shape[1:]
      elif array.dtype != dtype or array.shape[1:] != step_shape:
        raise ValueError(
          f"column {column!r} joins chunks of different dtype or step shape: "
          f"{dtype}{list(step_shape)} and {array.dtype}{list(array.shape[1:])} (chunk {chunk_key})"
        )
    assert dtype is not None
    refs[column] = tuple(canonical)
    specs[column] = ColumnSpec(dtype, step_shape if squeezed else (steps, *step_shape))
  return refs, specs


def resolve(
  refs: Mapping[str, Sequence[ChunkRef]], chunks: Mapping[int, np.ndarray]
) -> dict[str, np.ndarray]:
  """Builds an item's arrays from canonical refs and its chunks' arrays.

  A column made of one slice or index is a read-only view of its chunk (no
  copy); a column joining several slices is a new array.
  """
  data: dict[str, np.ndarray] = {}
  for column, entries in refs.items():
    if len(entries) == 1:
      chunk_key, where = entries[0]
      data[column] = (
        chunks[chunk_key][where] if isinstance(where, slice) else chunks[chunk_key][where, ...]
      )
    else:
      data[column] = np.concatenate([chunks[k][w] for k, w in entries], axis=0)
  return data


class ChunkStore:
  """Reference-counted, immutable chunks (see the module docstring). Thread-safe."""

  def __init__(self):
    self._lock = threading.Lock()
    self._chunks: dict[int, np.ndarray] = {}
    self._refs: dict[int, int] = {}
    self._nbytes = 0

  def put(self, key: int, array: Any, *, copy: bool = True) -> None:
    """Stores a chunk and gives the caller one reference to it (release it when done).

    Args:
      key: the chunk's uint64 key.
      array: the chunk, with at least one dimension; its first axis is steps.
      copy: False hands `array` itself over (it is made read-only): the cheap
        way for a writer that built the array for this purpose.

    Putting a key that is already stored keeps the stored data and adds a
    reference for the caller; its dtype and shape must match.
    """
    key = check_key(key, "chunk key")
    chunk = np.array(array, copy=True) if copy else np.asarray(array)
    if chunk.ndim < 1 or chunk.shape[0] < 1:
      raise ValueError(
        f"chunk {key}: expected an array with at least one step, got shape {chunk.shape}"
      )
    if chunk.dtype.hasobject:
      raise ValueError(f"chunk {key}: object arrays cannot be stored, got dtype {chunk.dtype}")
    chunk.flags.writeable = False
    with self._lock:
      existing = self._chunks.get(key)
      if existing is not None:
        if existing.dtype != chunk.dtype or existing.shape != chunk.shape:
          raise ValueError(
            f"chunk {key} is already stored as {existing.dtype}{list(existing.shape)}, "
            f"not {chunk.dtype}{list(chunk.shape)}"
          )
        self._refs[key] += 1
        return
      self._chunks[key] = chunk
      self._refs[key] = 1
      self._nbytes += chunk.nbytes

  def acquire(self, keys: Iterable[int], count: int = 1) -> dict[int, np.ndarray]:
    """Adds `count` references to each chunk (all or none); returns their arrays.

    Raises:
      KeyError: if a chunk is not stored (then no reference is added).
    """
    keys = list(keys)
    with self._lock:
      chunks, refs = self._chunks, self._refs
      try:
        arrays = {key: chunks[key] for key in keys}
      except KeyError:
        raise KeyError(f"chunks not stored: {[k for k in keys if k not in chunks]}") from None
      for key in keys:
        refs[key] += count
      return arrays

  def release(self, keys: Iterable[int]) -> None:
    """Drops one reference to each chunk (all or none); frees those left with none.

    Raises:
      KeyError: if a chunk is not stored (then no reference is dropped).
    """
    keys = list(keys)
    with self._lock:
      missing = [k for k in keys if k not in self._refs]
      if missing:
        raise KeyError(f"chunks not stored: {missing}")
      for key in keys:
        count = self._refs[key] - 1
        if count:
          self._refs[key] = count
        else:
          del self._refs[key]
          self._nbytes -= self._chunks.pop(key).nbytes

  def get(self, key: int) -> np.ndarray:
    """The stored (read-only) array of a chunk. KeyError if not stored."""
    with self._lock:
      return self._chunks[key]

  def lookup(self, key: int) -> np.ndarray | None:
    """The stored array of a chunk, or None."""
    with self._lock:
      return self._chunks.get(key)

  def refcount(self, key: int) -> int:
    """How many references the chunk has (0 if it is not stored)."""
    with self._lock:
      return self._refs.get(key, 0)

  def normalize(
    self, data_refs: Any
  ) -> tuple[dict[str, tuple[ChunkRef, ...]], dict[str, ColumnSpec]]:
    """`normalize_refs` against the chunks stored now."""
    with self._lock:
      return normalize_refs(data_refs, self._chunks.get)

  def rows(
    self, columns: Any, count: int | None
  ) -> tuple[dict[int, np.ndarray], dict[str, ColumnSpec]]:
    """Checks a batch's columns (column -> chunk key, each chunk `count` rows,
    or any number with `count` None).

    Returns:
      (chunk key -> array, column -> the dtype and shape of one row).

    Raises:
      ValueError: naming the column, for a bad or missing chunk or a chunk
        of another number of rows.
    """
    if not isinstance(columns, Mapping) or not columns:
      raise ValueError(f"columns must be a non-empty mapping column -> chunk key, got {columns!r}")
    arrays: dict[int, np.ndarray] = {}
    specs: dict[str, ColumnSpec] = {}
    with self._lock:
      for column, chunk_key in columns.items():
        if not isinstance(column, str):
          raise ValueError(f"column names must be strings, got {column!r}")
        chunk_key = check_key(chunk_key, f"column {column!r}: chunk key")
        array = self._chunks.get(chunk_key)
        if array is None:
          raise ValueError(f"column {column!r} references chunk {chunk_key}, which is not stored")
        if count is not None and array.shape[0] != count:
          raise ValueError(
            f"column {column!r}: chunk {chunk_key} has {array.shape[0]} rows, not one per item "
            f"of the batch ({count})"
          )
        arrays[chunk_key] = array
        specs[column] = ColumnSpec(array.dtype, array.shape[1:])
    return arrays, specs

  def resolve(self, data_refs: Any) -> dict[str, np.ndarray]:
    """An item's arrays from its data references (checked first)."""
    with self._lock:
      refs, _ = normalize_refs(data_refs, self._chunks.get)
      chunks = {k: self._chunks[k] for entries in refs.values() for k, _ in entries}
    return resolve(refs, chunks)

  def keys(self) -> list[int]:
    with self._lock:
      return list(self._chunks)

  @property
  def nbytes(self) -> int:
    """Bytes held by the stored chunks' arrays."""
    with self._lock:
      return self._nbytes

  def info(self) -> dict[str, int]:
    with self._lock:
      return {
        "num_chunks": len(self._chunks),
        "nbytes": self._nbytes,
        "num_references": sum(self._refs.values()),
      }

  def __len__(self) -> int:
    with self._lock:
      return len(self._chunks)

  def __contains__(self, key: object) -> bool:
    with self._lock:
      return key in self._chunks

  def __repr__(self) -> str:
    info = self.info()
    return f"ChunkStore(num_chunks={info['num_chunks']}, nbytes={info['nbytes']})"

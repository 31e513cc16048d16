"""Table snapshots: a table's whole state as plain, picklable values, and the check of one.

`Table.snapshot()` captures a table with `encode` and `item_entry`;
`Table.restore()` and `Table.from_snapshot()` bring one back after
`prepare` has checked it completely against the table (so a bad snapshot
raises ValueError before anything changes). Checkpoints (checkpoint.py) are
snapshots of a server's tables in one file; a ReplayNode ships its tables to
its worker as snapshots.

A snapshot is a dict:

  format, version   FORMAT and VERSION
  name, max_size, max_times_sampled, signature (signature.plain)
  sampler, remover  the selectors' options (selectors.from_options)
  rate_limiter      the limiter's configuration and counters (RateLimiter.snapshot)
  stats             the table's lifetime counts (inserts, samples, ...)
  next_seq          the next insert/update sequence number
  items             in insertion order: key, priority, times_sampled, data
                    (column -> [(chunk_key, slice or index), ...]),
                    inserted_seq, updated_seq (which order FIFO/LIFO and heap
                    ties), structure (structure.py, or None), episodes (the
                    ids of the episodes its steps came from, or None: an
                    episode of its own; absent in older snapshots: None)
  chunks            chunk_key -> array: every chunk the items reference, shared
                    not copied (they are read-only); equal keys hold equal data,
                    so a checkpoint merges the chunks of several tables by key
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from launchpad.replay import chunk_store as chunk_store_lib
from launchpad.replay import rate_limiters, selectors
from launchpad.replay import signature as signature_lib
from launchpad.replay import structure as structure_lib
from launchpad.replay.chunk_store import ChunkRef, ColumnSpec, check_key
from launchpad.replay.item import check_episodes

FORMAT = "launchpad.replay.Table"
VERSION = 1


class PreparedItem(NamedTuple):
  """A snapshot's item, checked, as a table restores it."""

  key: int
  priority: float
  times_sampled: int
  refs: dict[str, tuple[ChunkRef, ...]]
  """Canonical data references (chunk_store.normalize_refs)."""
  inserted_seq: int
  updated_seq: int
  structure: Any
  episodes: tuple[int, ...] | None


class Prepared(NamedTuple):
  """What restoring a checked snapshot needs."""

  items: list[PreparedItem]
  """In insertion order."""
  chunks: dict[int, np.ndarray]
  """The chunks the items reference (and only those)."""
  counters: dict[str, Any]
  """The rate limiter's snapshot, its counters checked (RateLimiter.restore_counters)."""
  stats: dict[str, int]
  next_seq: int


def item_entry(
  key: int,
  priority: float,
  times_sampled: int,
  refs: Mapping[str, Iterable[ChunkRef]],
  inserted_seq: int,
  updated_seq: int,
  structure: Any,
  episodes: tuple[int, ...] | None,
) -> dict[str, Any]:
  """One item of a snapshot's "items"."""
  return {
    "key": key,
    "priority": priority,
    "times_sampled": times_sampled,
    "data": {column: list(entries) for column, entries in refs.items()},
    "inserted_seq": inserted_seq,
    "updated_seq": updated_seq,
    "structure": structure,
    "episodes": episodes,
  }


def encode(
  *,
  name: str,
  max_size: int,
  max_times_sampled: int,
  sampler: Mapping[str, Any],
  remover: Mapping[str, Any],
  signature: Mapping[str, ColumnSpec] | None,
  rate_limiter: Mapping[str, Any],
  stats: Mapping[str, int],
  next_seq: int,
  items: list[dict[str, Any]],
  chunks: dict[int, np.ndarray],
) -> dict[str, Any]:
  """A snapshot of a table from its parts (see the module docstring)."""
  return {
    "format": FORMAT,
    "version": VERSION,
    "name": name,
    "max_size": max_size,
    "max_times_sampled": max_times_sampled,
    "sampler": dict(sampler),
    "remover": dict(remover),
    "signature": signature_lib.plain(signature),
    "rate_limiter": dict(rate_limiter),
    "stats": dict(stats),
    "next_seq": next_seq,
    "items": items,
    "chunks": chunks,
  }


def is_snapshot(value: Any) -> bool:
  """Whether `value` says it is a table snapshot (it may still be malformed)."""
  return isinstance(value, Mapping) and value.get("format") == FORMAT


def configuration(snapshot: Mapping[str, Any]) -> dict[str, Any]:
  """The Table arguments that configure a table as the snapshot's was (new selectors and limiter).

  Raises:
    ValueError: not a snapshot.
  """
  if not is_snapshot(snapshot):
    raise ValueError("not a launchpad.replay.Table snapshot")
  return {
    "name": snapshot["name"],
    "sampler": selectors.from_options(snapshot["sampler"]),
    "remover": selectors.from_options(snapshot["remover"]),
    "max_size": snapshot["max_size"],
    "rate_limiter": rate_limiters.RateLimiter.from_snapshot(snapshot["rate_limiter"]),
    "max_times_sampled": snapshot["max_times_sampled"],
    "signature": snapshot["signature"],
  }


def prepare(
  snapshot: Any,
  table: str,
  max_size: int,
  signature: Mapping[str, ColumnSpec] | None,
  stat_names: Collection[str],
) -> Prepared:
  """Checks a snapshot against a table of this name, max_size and signature.

  Counts of the snapshot's "stats" not in `stat_names` are dropped.

  Raises:
    ValueError: naming the table, when the snapshot is malformed or its
      items do not fit.
  """

  def bad(message: str) -> ValueError:
    return ValueError(f"table {table!r}: cannot restore: {message}")

  if not is_snapshot(snapshot):
    raise bad("not a launchpad.replay.Table snapshot")
  if snapshot.get("version") != VERSION:
    raise bad(f"snapshot version {snapshot.get('version')!r}, this code reads {VERSION}")
  try:
    raw_items = list(snapshot["items"])
    raw_chunks = dict(snapshot["chunks"])
    limiter = rate_limiters.RateLimiter.from_snapshot(snapshot["rate_limiter"])
    stats = {k: int(v) for k, v in dict(snapshot.get("stats", {})).items() if k in stat_names}
    next_seq = int(snapshot.get("next_seq", 0))
  except (KeyError, TypeError, ValueError) as e:
    raise bad(f"malformed snapshot ({type(e).__name__}: {e})") from None
  if len(raw_items) > max_size:
    raise bad(f"{len(raw_items)} items do not fit max_size {max_size}")
  chunks: dict[int, np.ndarray] = {}
  for key, array in raw_chunks.items():
    key = check_key(key, "chunk key")
    array = np.asarray(array)
    if array.ndim < 1 or array.shape[0] < 1:
      raise bad(f"chunk {key} has shape {array.shape}: chunks need at least one step")
    chunks[key] = array
  items: list[PreparedItem] = []
  seen: set[int] = set()
  used: set[int] = set()
  for entry in raw_items:
    try:
      item, specs = _item(entry, chunks)
    except (KeyError, TypeError, ValueError) as e:
      raise bad(
        f"item {entry.get('key') if isinstance(entry, Mapping) else entry!r}: {e}"
      ) from None
    if item.key in seen:
      raise bad(f"item {item.key} appears twice")
    seen.add(item.key)
    signature_lib.check(table, signature, specs)
    used.update(chunk_store_lib.chunk_keys(item.refs))
    items.append(item)
  items.sort(key=lambda item: item.inserted_seq)
  next_seq = max([next_seq, *(max(item.inserted_seq, item.updated_seq) for item in items)])
  needed = {key: chunks[key] for key in used}  # chunks no item references are not restored
  return Prepared(items, needed, limiter.snapshot(), stats, next_seq)


def _item(
  entry: Any, chunks: Mapping[int, np.ndarray]
) -> tuple[PreparedItem, dict[str, ColumnSpec]]:
  """One of the snapshot's items, checked, and the dtype and shape of each of its columns."""
  key = check_key(entry["key"], "item key")
  priority = selectors.check_priority(entry["priority"])
  times_sampled = entry["times_sampled"]
  inserted_seq, updated_seq = int(entry["inserted_seq"]), int(entry["updated_seq"])
  if isinstance(times_sampled, bool) or not isinstance(times_sampled, int) or times_sampled < 0:
    raise ValueError(f"times_sampled must be an integer >= 0, got {times_sampled!r}")
  refs, specs = chunk_store_lib.normalize_refs(entry["data"], chunks.get)
  structure = entry.get("structure")
  if structure is not None:
    structure_lib.check(structure, refs)
  episodes = entry.get("episodes")
  if episodes is not None:
    episodes = check_episodes(episodes)
  item = PreparedItem(
    key, priority, times_sampled, refs, inserted_seq, updated_seq, structure, episodes
  )
  return item, specs

"""Table: a thread-safe, rate-limited collection of prioritised items.

Reverb's `Table`, in process. Each item (item.py) has a uint64 key, a
priority, a count of the times it was sampled, and data given as references
to chunks in a shared `ChunkStore` (see chunk_store.py). A table has

  a sampler   a selector (selectors.py) that picks the item `sample` returns;
  a remover   a selector that picks the item evicted when an insert takes the
              table past `max_size`;
  a rate limiter (rate_limiters.py) deciding whether an insert or a sample
              may proceed now. Blocked callers wait on a condition, up to
              their timeout, then get RateLimiterTimeoutError; `close()`
              wakes them all with TableClosedError.

Items sampled `max_times_sampled` times are removed. Every operation takes
the table's one lock; data is resolved to arrays outside it, from read-only
chunks that cannot change, so a large sample does not hold up writers.
`insert_many` inserts a batch whose items are the rows of stored chunks
under one lock hold (per run the limiter allows), with per-run work; the
server inserts `Client.insert_batch` batches with it. `stats()` is the
cheap reading for live views.

Sampling is a transaction (`Table.sampling`): what a call samples counts at
once, so that concurrent callers see the rate limiter as it is, and is
undone if the call fails before it ends (a reply that cannot be built, a
MemoryError), so a failed call changes nothing. `sample` is one such call.
One call asks for at most MAX_SAMPLES_PER_CALL items.

`snapshot()` captures everything a checkpoint needs (items in insertion
order with their priorities and times sampled, the chunks they reference,
the limiter's counters, the order heaps break ties in) as plain Python and
numpy values that pickle (the format: snapshot.py); `restore()` and
`Table.from_snapshot()` bring it back. A signature (signature.py) fixes the
dtype and shape of every item's columns. Invalid arguments raise ValueError
before anything changes.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from launchpad import timeouts
from launchpad.replay import chunk_store as chunk_store_lib
from launchpad.replay import rate_limiters, selectors
from launchpad.replay import signature as signature_lib
from launchpad.replay import snapshot as snapshot_lib
from launchpad.replay import structure as structure_lib
from launchpad.replay.chunk_store import ChunkStore, ColumnSpec, check_key
from launchpad.replay.errors import RateLimiterTimeoutError, TableClosedError
from launchpad.replay.item import Item, SampledItem, check_episodes
from launchpad.replay.table_info import TableInfo
from launchpad.timeouts import Timeout

MAX_SAMPLES_PER_CALL = 65_536
"""The most items one sample call may ask for.

A call's items, their data and its reply are all in memory at once, on the
server and on the client: a larger request is refused (ValueError) before
anything changes. Sample in calls of at most this many items instead.
"""


class _CallStats:
  """How the rate limiter treated one kind of call (inserts or samples)."""

  __slots__ = ("cancelled", "completed", "limited", "pending", "timeouts", "wait_seconds")

  def __init__(self):
    self.completed = 0  # calls the limiter let through
    self.limited = 0  # calls that had to wait
    self.pending = 0  # calls waiting now
    self.timeouts = 0
    self.cancelled = 0  # woken by close()
    self.wait_seconds = 0.0  # total time spent waiting, by finished waits

  def info(self) -> dict[str, Any]:
    return {name: getattr(self, name) for name in self.__slots__}


class Table:
  """Items with priorities, a sampler, a remover and a rate limiter. Thread-safe.

  Args:
    name: the table's name (in errors, info and checkpoints).
    sampler: the selector `sample` draws with (selectors.py).
    remover: the selector that picks the item to evict when an insert takes
      the table past `max_size`. A separate, empty object from `sampler`.
    max_size: the most items the table holds (>= 1).
    rate_limiter: decides when inserts and samples may proceed; it belongs to
      this table alone.
    max_times_sampled: an item is removed once sampled this many times; < 1
      means never.
    signature: optional column -> (dtype, shape) every item's data must
      resolve to. The shape includes the step axis of a column built from
      slices (e.g. (None, 4) for any number of 4-vectors) and not that of a
      squeezed single step.
    chunk_store: where item data lives; tables of one server share one. By
      default the table has a store of its own.
  """

  def __init__(
    self,
    name: str,
    sampler: selectors.ItemSelector,
    remover: selectors.ItemSelector,
    max_size: int,
    rate_limiter: rate_limiters.RateLimiter,
    max_times_sampled: int = 0,
    signature: signature_lib.Signature | None = None,
    chunk_store: ChunkStore | None = None,
  ):
    if not isinstance(name, str) or not name:
      raise ValueError(f"table name must be a non-empty string, got {name!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
      raise ValueError(f"table {name!r}: max_size must be a positive integer, got {max_size!r}")
    if isinstance(max_times_sampled, bool) or not isinstance(max_times_sampled, int):
      raise ValueError(
        f"table {name!r}: max_times_sampled must be an integer, got {max_times_sampled!r}"
      )
    for role, selector in (("sampler", sampler), ("remover", remover)):
      if not isinstance(selector, selectors.ItemSelector):
        raise TypeError(f"table {name!r}: {role} must be an ItemSelector, got {selector!r}")
      if len(selector):
        raise ValueError(f"table {name!r}: the {role} must be empty, it holds {len(selector)} keys")
    if sampler is remover:
      raise ValueError(f"table {name!r}: sampler and remover must be two selector objects, not one")
    if not isinstance(rate_limiter, rate_limiters.RateLimiter):
      raise TypeError(f"table {name!r}: rate_limiter must be a RateLimiter, got {rate_limiter!r}")
    if chunk_store is not None and not isinstance(chunk_store, ChunkStore):
      raise TypeError(f"table {name!r}: chunk_store must be a ChunkStore, got {chunk_store!r}")
    self._signature = signature_lib.normalize(signature)
    rate_limiter.register(name)  # last: a failed construction leaves the limiter free

    self._name = name
    self._sampler = sampler
    self._remover = remover
    self._max_size = max_size
    self._max_times_sampled = max_times_sampled
    self._limiter = rate_limiter
    self._store = chunk_store if chunk_store is not None else ChunkStore()

    self._lock = threading.Lock()
    self._can_insert = threading.Condition(self._lock)
    self._can_sample = threading.Condition(self._lock)
    self._items: dict[int, Item] = {}  # in insertion order (dicts keep it)
    self._seq = 0  # orders inserts and updates, for snapshots
    self._epoch = 0  # counts resets and restores, which make pending samples' undo moot
    self._closed = False
    self._stats = dict.fromkeys(
      (
        "inserts",
        "updates",
        "samples",
        "deletes",
        "evictions",
        "expired",
        "resets",
        "unique_samples",  # since the last reset
        "deleted_episodes",  # since the last reset
      ),
      0,
    )
    # Episodes the items came from (Reverb's num_episodes): episode id -> items
    # of it here, for a trajectory writer's items; each other item is an
    # episode of its own, only counted (no entry per item on the insert path).
    self._episodes: dict[int, int] = {}
    self._solo_episodes = 0
    self._call_stats = {"insert": _CallStats(), "sample": _CallStats()}

  @classmethod
  def queue(cls, name: str, max_size: int, chunk_store: ChunkStore | None = None) -> Table:
    """A table that behaves as a bounded FIFO queue (Reverb's `Table.queue`).

    Each item is sampled once, oldest first; samples wait while it is empty,
    inserts wait while it is full.
    """
    return cls(
      name=name,
      sampler=selectors.Fifo(),
      remover=selectors.Fifo(),
      max_size=max_size,
      rate_limiter=rate_limiters.Queue(max_size),
      max_times_sampled=1,
      chunk_store=chunk_store,
    )

  @classmethod
  def stack(cls, name: str, max_size: int, chunk_store: ChunkStore | None = None) -> Table:
    """A table that behaves as a bounded LIFO stack (Reverb's `Table.stack`)."""
    return cls(
      name=name,
      sampler=selectors.Lifo(),
      remover=selectors.Lifo(),
      max_size=max_size,
      rate_limiter=rate_limiters.Stack(max_size),
      max_times_sampled=1,
      chunk_store=chunk_store,
    )

  # Properties.

  @property
  def name(self) -> str:
    return self._name

  @property
  def max_size(self) -> int:
    return self._max_size

  @property
  def max_times_sampled(self) -> int:
    return self._max_times_sampled

  @property
  def chunk_store(self) -> ChunkStore:
    return self._store

  @property
  def signature(self) -> dict[str, ColumnSpec] | None:
    return None if self._signature is None else dict(self._signature)

  @property
  def closed(self) -> bool:
    return self._closed

  def __len__(self) -> int:
    with self._lock:
      return len(self._items)

  def __repr__(self) -> str:
    return f"Table(name={self._name!r}, size={len(self)}, max_size={self._max_size})"

  def check_signature(self, specs: Mapping[str, ColumnSpec]) -> None:
    """Raises ValueError, naming the table and the column, unless `specs` match the signature.

    `specs` are an item's columns, column -> ColumnSpec (signature.py).
    """
    signature_lib.check(self._name, self._signature, specs)

  def can_insert(self, num_inserts: int = 1) -> bool:
    """Whether `num_inserts` inserts could proceed now without waiting."""
    with self._lock:
      return not self._closed and self._limiter.can_insert(num_inserts)

  def can_sample(self, num_samples: int = 1) -> bool:
    """Whether `num_samples` samples could proceed now without waiting."""
    with self._lock:
      return not self._closed and self._limiter.can_sample(num_samples)

  # Operations.

  def insert(
    self,
    key: int,
    priority: float,
    data_refs: chunk_store_lib.DataRefs,
    timeout: Timeout = None,
    structure: Any = None,
    episodes: Sequence[int] | None = None,
  ) -> None:
    """Inserts an item, waiting up to `timeout` for the rate limiter.

    As in Reverb, inserting a key that is already in the table (or that
    arrives while this call waits) only updates that item's priority.

    Args:
      key: the item's uint64 key.
      priority: finite and >= 0.
      data_refs: column -> [(chunk_key, slice or index), ...] into the chunk store
        (see chunk_store.py); the item takes a reference to each chunk.
      timeout: see `Timeout`.
      structure: how the item's columns nest (structure.py), given back with
        its samples; None: a flat dict of its columns.
      episodes: the ids of the episodes the item's steps came from (a
        trajectory writer's); None: the item is an episode of its own, as a
        Reverb client's insert is. The table counts them (info().num_episodes).

    Raises:
      ValueError: bad key, priority, data references, structure, episode ids
        or signature mismatch (nothing changes).
      RateLimiterTimeoutError: the limiter did not allow the insert in time.
      TableClosedError: the table is closed, or was closed while waiting.
    """
    key = self._checked(check_key, key, "item key")
    priority = self._checked(selectors.check_priority, priority)
    refs, specs = self._checked(self._store.normalize, data_refs)
    self.check_signature(specs)
    if structure is not None:
      self._checked(structure_lib.check, structure, refs)
    if episodes is not None:
      episodes = self._checked(check_episodes, episodes)
    seconds = timeouts.validate(timeout)
    chunk_keys = chunk_store_lib.chunk_keys(refs)
    with self._lock:
      if self._closed:
        raise TableClosedError(self._name, "insert")
      item = self._items.get(key)
      if item is None:
        self._await("insert", self._can_insert, self._limiter.can_insert, seconds)
        item = self._items.get(key)  # it may have arrived while we waited
      if item is not None:
        self._set_priorities([item], [priority])
        self._notify()
        return
      try:
        chunks = self._store.acquire(chunk_keys)
      except KeyError as e:
        raise ValueError(
          f"table {self._name!r}: {e.args[0]} (released while the insert waited)"
        ) from None
      try:
        self._add_to_selectors([key], [priority])
      except ValueError:
        self._store.release(chunk_keys)
        raise
      seq = self._next_seq()
      item = Item(key, priority, 0, refs, chunks, seq, seq, structure, episodes=episodes)
      self._items[key] = item
      self._enter_episodes(item)
      self._limiter.record_insert()
      self._stats["inserts"] += 1
      self._evict()
      self._notify()

  def insert_many(
    self,
    keys: Sequence[int],
    priorities: float | Sequence[float],
    columns: Mapping[str, int],
    timeout: Timeout = None,
    structure: Any = None,
  ) -> None:
    """Inserts a batch of items whose data are the rows of stored chunks, in order.

    Item i gets row i of each chunk (one row: no step axis). The batch is
    checked once and goes in under one lock hold per run of items the rate
    limiter allows, with per-run rather than per-item work: this is the
    server's path for `Client.insert_batch`. The rate limiter sees the same
    inserts (and evictions) as `len(keys)` calls of `insert`; when it blocks
    part-way the call waits, up to `timeout` in all, for the rest. A key
    already in the table only updates that item's priority.

    Args:
      keys: the items' uint64 keys, distinct.
      priorities: one priority for every item, or one per item.
      columns: column -> key of a stored chunk of `len(keys)` rows; each item
        takes a reference to each chunk.
      timeout: see `Timeout`.
      structure: how each item's columns nest (structure.py); None: a flat dict.

    Raises:
      ValueError: bad keys, priorities, chunks, structure or signature
        mismatch (nothing changes). Only a selector refusing a priority (a
        Prioritized weight that overflows a float) is found as its run goes
        in: the runs before it stay in, as after a timeout.
      RateLimiterTimeoutError, TableClosedError: the items before the one that
        could not go in are in the table (the error's notes say how many).
    """
    keys, values, columns, arrays = self._checked_rows(keys, priorities, columns, structure, True)
    count = len(keys)
    seconds = timeouts.validate(timeout)
    deadline = None if seconds is None else time.monotonic() + seconds
    done = 0
    try:
      with self._lock:
        while done < count:
          remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
          self._await("insert", self._can_insert, self._limiter.can_insert, remaining)
          allowed = self._limiter.inserts_allowed(count - done, len(self._items), self._max_size)
          end = done + allowed
          rows = list(range(done, end))
          self._insert_rows(keys[done:end], values[done:end], rows, columns, arrays, structure)
          done = end
    except (RateLimiterTimeoutError, TableClosedError, ValueError) as e:
      if done:
        e.add_note(f"table {self._name!r}: {done} of the batch's {count} items were inserted")
      raise

  def insert_rows(
    self,
    keys: Sequence[int],
    priorities: Sequence[float],
    rows: Sequence[int],
    columns: Mapping[str, int],
    timeout: Timeout = None,
    structure: Any = None,
    episodes: Sequence[int] | None = None,
  ) -> int:
    """Inserts items that are each one row of stored chunks, in order, as
    that many `insert` calls would: as many as the rate limiter allows at
    once after waiting up to `timeout` for the first, under one lock hold.

    Item i is row rows[i] of each column's chunk (no step axis), as the
    `insert` of data_refs {column: [(chunk, rows[i])]} is: a trajectory
    writer's items of one step each, which the server takes this way. It
    checks the run once (nothing changes when it raises ValueError) and
    keeps the items in insert_many's compact form. A key already in the
    table only updates that item's priority.

    Args:
      keys: the items' distinct uint64 keys.
      priorities: one per item.
      rows: one row index per item, within every chunk of `columns`.
      columns: column -> key of a stored chunk.
      timeout: see `Timeout`.
      structure: how each item's columns nest (structure.py); None: a flat dict.
      episodes: the ids of the episodes every item's step came from; None:
        each item an episode of its own.

    Returns:
      how many of the items went in (at least one): the caller inserts the
      rest with a call of its own, which waits for the limiter again.

    Raises:
      ValueError: bad keys, priorities, rows, chunks, structure, episodes or
        signature mismatch; or a selector refused a priority.
      RateLimiterTimeoutError, TableClosedError: none went in.
    """
    count = len(keys)
    if count < 1 or len(rows) != count:
      raise ValueError(f"table {self._name!r}: expected one row per item, got {rows!r}")
    keys, values, columns, arrays = self._checked_rows(keys, priorities, columns, structure, False)
    shortest = min(array.shape[0] for array in arrays.values())
    if not all(type(row) is int and 0 <= row < shortest for row in rows):
      raise ValueError(f"table {self._name!r}: rows {rows!r} are not all rows of the chunks")
    if episodes is not None:
      episodes = self._checked(check_episodes, episodes)
    seconds = timeouts.validate(timeout)
    with self._lock:
      if self._closed:
        raise TableClosedError(self._name, "insert")
      known = next((i for i, key in enumerate(keys) if key not in self._items), count)
      if known:  # as insert does for each: no wait, only their priorities change
        self._set_priorities([self._items[key] for key in keys[:known]], values[:known])
        self._notify()
        return known
      self._await("insert", self._can_insert, self._limiter.can_insert, seconds)
      allowed = self._limiter.inserts_allowed(count, len(self._items), self._max_size)
      # The limiter's call statistics count each new item, as insert would.
      fresh = sum(key not in self._items for key in keys[:allowed])
      self._call_stats["insert"].completed += fresh - 1
      rows = list(rows[:allowed])
      self._insert_rows(
        keys[:allowed], values[:allowed], rows, columns, arrays, structure, episodes
      )
    return allowed

  def sample(self, num_samples: int = 1, timeout: Timeout = None) -> list[SampledItem]:
    """Samples up to `num_samples` items (with replacement), as Reverb's flexible batches.

    The first sample waits up to `timeout` for the rate limiter; the others
    are taken only if the limiter allows them at once, so the list holds at
    least one item and at most `num_samples`. Each sample counts towards the
    item's `times_sampled` (and may remove it, see `max_times_sampled`). It
    is one `sampling()` transaction: if it fails (a MemoryError), nothing
    changed.

    Raises:
      ValueError: `num_samples` is not an integer in [1, MAX_SAMPLES_PER_CALL].
      RateLimiterTimeoutError: the limiter allowed no sample in time.
      TableClosedError: the table is closed, or was closed while waiting.
    """
    with self.sampling() as sampling:
      return sampling.sample(num_samples, timeout)

  def sampling(self) -> Sampling:
    """A transaction of samples: `with table.sampling() as s: items = s.sample(n, timeout)`.

    Each `s.sample()` takes its samples at once, as `Table.sample` does (they
    count towards `times_sampled`, the rate limiter and the table's counts,
    and items sampled `max_times_sampled` times leave the table), so callers
    running alongside see the table as it is. If the block raises, every
    sample of the transaction is undone: counts, the limiter's counters and
    `times_sampled` go back, and the items that left come back where they
    were (FIFO/LIFO order and heap tie-breaking as before: a FIFO, LIFO or
    heap selector is rebuilt for that, O(n) in the table's size, heaps
    O(n log n)). A reset or restore
    in between makes the undo moot: what it wiped stays wiped. What other
    calls did meanwhile stays done. The rate limiter's call statistics
    (`insert_stats`, `sample_stats`) keep the calls.

    A server samples through one transaction per RPC, building its reply
    inside it, so a call whose reply cannot be built changes nothing.
    """
    return Sampling(self)

  def mutate_priorities(
    self, updates: Mapping[int, float] | None = None, deletes: Iterable[int] = ()
  ) -> None:
    """Updates priorities and deletes items; keys not in the table are ignored.

    Deletes happen first, as in Reverb. All priorities and keys are checked
    before anything changes: one bad value and nothing is applied.

    Raises:
      ValueError: a key or priority is invalid.
    """
    checked: dict[int, float] = {}
    for key, priority in (updates or {}).items():
      key = self._checked(check_key, key, "item key")
      checked[key] = self._checked(selectors.check_priority, priority, context=f"item {key}")
    delete_keys = [self._checked(check_key, key, "item key") for key in deletes]
    with self._lock:
      removed = 0
      for key in delete_keys:
        item = self._items.get(key)
        if item is not None:
          self._remove(item, "deletes")
          removed += 1
      present = [(self._items[k], p) for k, p in checked.items() if k in self._items]
      if present:
        self._set_priorities([item for item, _ in present], [p for _, p in present])
      if removed:
        self._notify()

  def reset(self) -> None:
    """Removes every item and zeroes the rate limiter's counters (waiting inserts may proceed)."""
    with self._lock:
      released = [key for item in self._items.values() for key in item.chunks]
      self._items = {}
      self._sampler.clear()
      self._remover.clear()
      self._store.release(released)
      self._limiter.reset()
      self._stats["resets"] += 1
      self._stats["unique_samples"] = 0
      self._stats["deleted_episodes"] = 0
      self._episodes = {}
      self._solo_episodes = 0
      self._epoch += 1
      self._notify()

  def close(self) -> None:
    """Refuses further inserts and samples and wakes every waiting caller with TableClosedError.

    For a server that stops. Everything else (info, snapshot, mutations)
    still works, so a last checkpoint can be taken. Idempotent.
    """
    with self._lock:
      self._closed = True
      self._can_insert.notify_all()
      self._can_sample.notify_all()

  def stats(self) -> dict[str, int]:
    """What a live view shows, cheaply: size, max_size, and lifetime num_inserts and num_samples.

    The counts are the same as info()'s (reset() does not zero them); rates
    come from two readings. One short lock hold, no copies.
    """
    with self._lock:
      return {
        "size": len(self._items),
        "max_size": self._max_size,
        "num_inserts": self._stats["inserts"],
        "num_samples": self._stats["samples"],
      }

  def info(self) -> TableInfo:
    """The table's configuration, size, counters and rate limiter state (table_info.py).

    Reverb's `Table.info`: a TableInfo, which is also a mapping with the
    keys this method's dict had (size, sampler, rate_limiter, num_*, ...).
    """
    with self._lock:
      limiter = self._limiter.info()
      limiter["insert_stats"] = self._call_stats["insert"].info()
      limiter["sample_stats"] = self._call_stats["sample"].info()
      stats = self._stats
      return TableInfo(
        name=self._name,
        sampler_options=self._sampler.options(),
        remover_options=self._remover.options(),
        max_size=self._max_size,
        max_times_sampled=self._max_times_sampled,
        rate_limiter_info=limiter,
        signature=signature_lib.plain(self._signature),
        current_size=len(self._items),
        num_episodes=len(self._episodes) + self._solo_episodes,
        num_deleted_episodes=stats["deleted_episodes"],
        num_unique_samples=stats["unique_samples"],
        closed=self._closed,
        num_inserts=stats["inserts"],
        num_updates=stats["updates"],
        num_samples=stats["samples"],
        num_deletes=stats["deletes"],
        num_evictions=stats["evictions"],
        num_expired=stats["expired"],
        num_resets=stats["resets"],
      )

  # Checkpoints.

  def snapshot(self) -> dict[str, Any]:
    """The table's whole state, consistent at one instant, as plain picklable values.

    See snapshot.py for what it holds. Its chunks are shared, not copied
    (they are read-only).
    """
    with self._lock:
      items = []
      chunks: dict[int, np.ndarray] = {}
      for item in self._items.values():
        items.append(
          snapshot_lib.item_entry(
            item.key,
            item.priority,
            item.times_sampled,
            item.data_refs(),
            item.inserted_seq,
            item.updated_seq,
            item.structure,
            item.episodes,
          )
        )
        chunks.update(item.chunks)
      return snapshot_lib.encode(
        name=self._name,
        max_size=self._max_size,
        max_times_sampled=self._max_times_sampled,
        sampler=self._sampler.options(),
        remover=self._remover.options(),
        signature=self._signature,
        rate_limiter=self._limiter.snapshot(),
        stats=self._stats,
        next_seq=self._seq,
        items=items,
        chunks=chunks,
      )

  def restore(self, snapshot: Mapping[str, Any]) -> None:
    """Replaces this table's contents and limiter counters with a snapshot's.

    This table keeps its own configuration (selectors, limiter settings,
    max_size, signature); the snapshot's items must fit it. Chunks missing
    from the store are added to it. The snapshot is checked completely
    before anything changes. Restoring reproduces the FIFO/LIFO order and the
    heaps' tie-breaking exactly; a Prioritized tree is rebuilt with the same
    probabilities (its internal layout, hence a seeded draw sequence, may
    differ).

    Raises:
      ValueError: the snapshot is malformed or does not fit this table.
    """
    prepared = snapshot_lib.prepare(
      snapshot, self._name, self._max_size, self._signature, self._stats.keys()
    )
    with self._lock:
      self._store_all(prepared.chunks)
      old = [key for item in self._items.values() for key in item.chunks]
      self._items = {}
      self._sampler.clear()
      self._remover.clear()
      self._store.release(old)
      self._episodes = {}
      self._solo_episodes = 0
      for entry in prepared.items:
        arrays = self._store.acquire(chunk_store_lib.chunk_keys(entry.refs))
        item = Item(
          entry.key,
          entry.priority,
          entry.times_sampled,
          entry.refs,
          arrays,
          entry.inserted_seq,
          entry.updated_seq,
          entry.structure,
          episodes=entry.episodes,
        )
        self._items[entry.key] = item
        self._enter_episodes(item)
      self._store.release(prepared.chunks)  # _store_all's references; the items hold their own
      self._rebuild_selectors()
      self._limiter.restore_counters(prepared.counters)
      self._stats.update(prepared.stats)
      self._seq = prepared.next_seq
      self._epoch += 1
      self._notify()

  @classmethod
  def from_snapshot(
    cls, snapshot: Mapping[str, Any], chunk_store: ChunkStore | None = None
  ) -> Table:
    """A new table configured and filled as the snapshot says (for loading a checkpoint)."""
    table = cls(**snapshot_lib.configuration(snapshot), chunk_store=chunk_store)
    table.restore(snapshot)
    return table

  # Internals (the caller holds self._lock where noted).

  def _checked_rows(
    self,
    keys: Sequence[int],
    priorities: float | Sequence[float],
    columns: Mapping[str, int],
    structure: Any,
    row_per_item: bool,
  ) -> tuple[list[int], list[float], dict[str, int], dict[int, np.ndarray]]:
    """The checks of a batch of items that are rows of stored chunks
    (insert_many, insert_rows): (keys, priorities, column -> chunk key,
    chunk key -> array). `row_per_item`: each chunk has one row per item."""
    keys = list(keys)
    plain = all(type(key) is int for key in keys) and (
      not keys or (min(keys) >= 0 and max(keys) < 2**64)
    )
    if not plain:  # check one by one, for the error message (and numpy integers)
      keys = [self._checked(check_key, key, "item key") for key in keys]
    count = len(keys)
    if len(set(keys)) != count:
      raise ValueError(f"table {self._name!r}: the batch's item keys are not distinct")
    values = self._checked(selectors.check_priorities, priorities, count)
    arrays, specs = self._checked(self._store.rows, columns, count if row_per_item else None)
    columns = {column: int(chunk) for column, chunk in columns.items()}  # checked by rows()
    self.check_signature(specs)
    if structure is not None:
      self._checked(structure_lib.check, structure, columns)
    return keys, values, columns, arrays

  def _checked(self, check: Callable[..., Any], *args: Any, context: str = "") -> Any:
    """Runs a check, prefixing its ValueError with the table's name."""
    try:
      return check(*args)
    except ValueError as e:
      where = f"table {self._name!r}" + (f", {context}" if context else "")
      raise ValueError(f"{where}: {e}") from None

  def _await(
    self,
    operation: str,
    condition: threading.Condition,
    allowed: Callable[[], bool],
    seconds: float | None,
  ) -> None:
    """Waits (lock held) until `allowed()`; raises on timeout or close."""
    stats = self._call_stats[operation]
    if self._closed:
      raise TableClosedError(self._name, operation)
    if allowed():
      stats.completed += 1
      return
    stats.limited += 1
    stats.pending += 1
    start = time.monotonic()
    deadline = None if seconds is None else start + seconds
    try:
      while True:
        if self._closed:
          stats.cancelled += 1
          raise TableClosedError(self._name, operation)
        if allowed():
          stats.completed += 1
          return
        if deadline is None:
          condition.wait()
        else:
          remaining = deadline - time.monotonic()
          if remaining <= 0:
            stats.timeouts += 1
            raise RateLimiterTimeoutError(
              self._name, operation, seconds or 0.0, self._limiter.describe()
            )
          condition.wait(remaining)
    finally:
      stats.pending -= 1
      stats.wait_seconds += time.monotonic() - start

  def _notify(self) -> None:
    """Wakes the waiters that may now proceed (lock held)."""
    if self._call_stats["insert"].pending and self._limiter.can_insert():
      self._can_insert.notify_all()
    if self._call_stats["sample"].pending and self._limiter.can_sample():
      self._can_sample.notify_all()

  def _next_seq(self) -> int:
    self._seq += 1
    return self._seq

  def _set_priorities(self, items: list[Item], priorities: list[float]) -> None:
    """(lock held) Priorities already checked; items are in the table."""
    keys = [item.key for item in items]
    self._sampler.update_many(keys, priorities)
    self._remover.update_many(keys, priorities)
    for item, priority in zip(items, priorities, strict=True):
      item.priority = priority
      item.updated_seq = self._next_seq()
    self._stats["updates"] += len(items)

  def _insert_rows(
    self,
    keys: list[int],
    priorities: list[float],
    rows: list[int],
    columns: Mapping[str, int],
    arrays: dict[int, np.ndarray],
    structure: Any,
    episodes: tuple[int, ...] | None = None,
  ) -> None:
    """(lock held) Inserts keys[i] as row rows[i] of the chunks, of `episodes`
    (None: each an episode of its own); the limiter allowed them."""
    items = self._items
    present = [i for i, key in enumerate(keys) if key in items]
    if present:  # only their priorities change
      self._set_priorities([items[keys[i]] for i in present], [priorities[i] for i in present])
      fresh = sorted(set(range(len(keys))) - set(present))
      keys, priorities, rows = ([v[i] for i in fresh] for v in (keys, priorities, rows))
    if keys:
      try:
        self._store.acquire(arrays, count=len(keys))
      except KeyError as e:
        raise ValueError(
          f"table {self._name!r}: {e.args[0]} (released during the insert)"
        ) from None
      try:
        self._add_to_selectors(keys, priorities)
      except ValueError:
        self._store.release(list(arrays) * len(keys))
        raise
      seq = self._seq
      for row, key, priority in zip(rows, keys, priorities, strict=True):
        seq += 1
        items[key] = Item(key, priority, 0, columns, arrays, seq, seq, structure, row, episodes)
      self._seq = seq
      if episodes is None:
        self._solo_episodes += len(keys)  # each an episode of its own (see _episodes)
      else:  # as _enter_episodes for each item
        for episode in episodes:
          self._episodes[episode] = self._episodes.get(episode, 0) + len(keys)
      self._limiter.record_insert(len(keys))
      self._stats["inserts"] += len(keys)
      self._evict()
    self._notify()

  def _add_to_selectors(self, keys: list[int], priorities: list[float]) -> None:
    """(lock held) Adds new keys to the sampler and the remover: both or neither.

    Raises:
      ValueError: a selector refused a priority (a weight that overflows).
    """
    try:
      self._sampler.insert_unchecked(keys, priorities)
    except ValueError as e:
      raise ValueError(f"table {self._name!r}: sampler: {e}") from None
    try:
      self._remover.insert_unchecked(keys, priorities)
    except ValueError as e:
      for key in keys:
        self._sampler.delete(key)
      raise ValueError(f"table {self._name!r}: remover: {e}") from None

  def _evict(self) -> None:
    """(lock held) Removes the remover's choices until the table fits max_size."""
    while len(self._items) > self._max_size:
      victim, _ = self._remover.sample()
      self._remove(self._items[victim], "evictions")

  def _remove(self, item: Item, reason: str, release: bool = True) -> None:
    """(lock held) Removes an item and, unless told not to, drops its chunk references."""
    del self._items[item.key]
    self._sampler.delete(item.key)
    self._remover.delete(item.key)
    if release:
      self._store.release(item.chunks)
    self._leave_episodes(item)
    self._limiter.record_delete()
    self._stats[reason] += 1

  def _enter_episodes(self, item: Item, returning: bool = False) -> None:
    """(lock held) Counts a new item's episodes; `returning`: an undone sample brings it
    back, so an episode it was the last item of is no longer deleted."""
    if item.episodes is None:
      self._solo_episodes += 1
      back = 1
    else:
      back = 0
      for episode in item.episodes:
        count = self._episodes.get(episode, 0)
        self._episodes[episode] = count + 1
        back += count == 0
    if returning:
      self._stats["deleted_episodes"] -= back

  def _leave_episodes(self, item: Item) -> None:
    """(lock held) Uncounts a removed item's episodes: those it was the last item of are
    deleted (Reverb's num_deleted_episodes)."""
    if item.episodes is None:
      self._solo_episodes -= 1
      self._stats["deleted_episodes"] += 1
      return
    for episode in item.episodes:
      count = self._episodes[episode] - 1
      if count:
        self._episodes[episode] = count
      else:
        del self._episodes[episode]
        self._stats["deleted_episodes"] += 1

  def _rebuild_selectors(self) -> None:
    """(lock held) Refills both selectors from the items, in the order each restores from."""
    for selector in (self._sampler, self._remover):
      self._rebuild(selector)

  def _rebuild(self, selector: selectors.ItemSelector) -> None:
    """(lock held) Refills a selector from the items (valid and distinct: no checks needed)."""
    selector.clear()
    order = list(self._items.values())
    if selector.restore_order == "updated":
      order.sort(key=lambda item: item.updated_seq)
    selector.insert_unchecked([item.key for item in order], [item.priority for item in order])

  def _bad_num_samples(self, num_samples: Any) -> ValueError:
    """The error for a `num_samples` that is not an int in [1, MAX_SAMPLES_PER_CALL]."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
      return ValueError(
        f"table {self._name!r}: num_samples must be a positive integer, got {num_samples!r}"
      )
    return ValueError(
      f"table {self._name!r}: num_samples={num_samples} is more than one call may ask for "
      f"(at most {MAX_SAMPLES_PER_CALL}, launchpad.replay.MAX_SAMPLES_PER_CALL): a call's "
      "items are all in memory at once. Sample in chunks: call sample() or sample_batch() "
      f"repeatedly with at most {MAX_SAMPLES_PER_CALL} items each"
    )

  def _take(self, sampling: Sampling, num_samples: Any, timeout: Timeout) -> list[SampledItem]:
    """Samples for `sampling` (see `sampling()`), logging in it what it did."""
    if type(num_samples) is not int or not 0 < num_samples <= MAX_SAMPLES_PER_CALL:
      raise self._bad_num_samples(num_samples)
    seconds = timeouts.validate(timeout)
    picked: list[tuple] = []
    with self._lock:
      self._await("sample", self._can_sample, self._limiter.can_sample, seconds)
      if sampling.epoch != self._epoch:
        self._forget(sampling)  # a reset or restore wiped what it took before
        sampling.epoch = self._epoch
      drawn = sampling.drawn
      before, firsts_before = len(drawn), len(sampling.firsts)
      items, limiter = self._items, self._limiter
      try:
        if self._max_times_sampled < 1:
          # Nothing leaves the table while sampling: draw the whole batch at once.
          count = limiter.samples_allowed(num_samples)
          draws = self._sampler.sample_many(count) if count > 1 else [self._sampler.sample()]
          size = len(items)
          for key, probability in draws:
            item = items[key]
            drawn.append(item)
            item.times_sampled += 1
            if item.times_sampled == 1:
              sampling.firsts.append(item)
            picked.append((item, probability, size, item.priority, item.times_sampled))
        else:
          for i in range(num_samples):
            if i and not limiter.can_sample(len(drawn) - before + 1):
              break
            key, probability = self._sampler.sample()
            item = items[key]
            drawn.append(item)
            item.times_sampled += 1
            if item.times_sampled == 1:
              sampling.firsts.append(item)
            picked.append((item, probability, len(items), item.priority, item.times_sampled))
            if item.times_sampled >= self._max_times_sampled:
              sampling.expired.append(item)
              self._remove(item, "expired", release=False)  # released when it commits
      finally:  # counts what was drawn, even if drawing failed part-way
        taken = len(drawn) - before
        limiter.record_sample(taken)
        self._stats["samples"] += taken
        self._stats["unique_samples"] += len(sampling.firsts) - firsts_before
        self._notify()
    # Outside the lock: chunks are immutable and the item kept its arrays.
    return [
      SampledItem(item.key, item.resolve(), p, size, priority, times, item.structure)
      for item, p, size, priority, times in picked
    ]

  def _commit(self, sampling: Sampling) -> None:
    """Makes a transaction's samples final: the items it took out drop their chunks."""
    if sampling.expired:
      self._store.release([key for item in sampling.expired for key in item.chunks])

  def _undo(self, sampling: Sampling) -> None:
    """Undoes a transaction's samples (see `sampling()`)."""
    with self._lock:
      if sampling.epoch != self._epoch:
        self._forget(sampling)
        return
      drawn, firsts, expired = sampling.drawn, sampling.firsts, sampling.expired
      sampling.drawn, sampling.firsts, sampling.expired = [], [], []
      for item in drawn:
        item.times_sampled -= 1
      self._limiter.undo_sample(len(drawn))
      self._stats["samples"] -= len(drawn)
      # Items it sampled first count as unique unless another call sampled them since.
      self._stats["unique_samples"] -= sum(1 for item in firsts if not item.times_sampled)
      back = [item for item in expired if item.key not in self._items]
      superseded = [key for item in expired if item.key in self._items for key in item.chunks]
      if back:
        for item in back:
          self._items[item.key] = item
          self._enter_episodes(item, returning=True)
        # Two runs in insertion order, merged by the sort in O(n).
        order = sorted(self._items.values(), key=operator.attrgetter("inserted_seq"))
        self._items = {item.key: item for item in order}
        for selector in (self._sampler, self._remover):
          if selector.is_deterministic:  # where they come back decides what it picks
            self._rebuild(selector)
          else:  # a random selector's probabilities do not depend on the order of inserts
            selector.insert_unchecked([item.key for item in back], [item.priority for item in back])
        self._limiter.undo_delete(len(back))
        self._stats["expired"] -= len(back)
        self._evict()  # inserts that came meanwhile may have filled the places they left
      self._store.release(superseded)  # their keys were inserted again meanwhile
      self._notify()

  def _forget(self, sampling: Sampling) -> None:
    """(lock held) Drops a transaction's log after a reset or restore wiped what it took."""
    if sampling.expired:
      self._store.release([key for item in sampling.expired for key in item.chunks])
    sampling.drawn, sampling.firsts, sampling.expired = [], [], []

  def _store_all(self, chunks: Mapping[int, np.ndarray]) -> None:
    """(lock held) Puts chunks in the store, each with one reference; all or none."""
    done: list[int] = []
    try:
      for key, array in chunks.items():
        self._store.put(key, array, copy=False)
        done.append(key)
    except ValueError as e:
      self._store.release(done)
      raise ValueError(f"table {self._name!r}: cannot restore: {e}") from None


class Sampling:
  """One transaction of samples from a table (`Table.sampling()`): all of them count, or none.

  Use it as a context manager, once: leaving the block normally commits, an
  exception undoes every sample taken through it. One thread uses it.
  """

  __slots__ = ("drawn", "epoch", "expired", "firsts", "table")

  def __init__(self, table: Table):
    self.table = table
    self.drawn: list[Item] = []  # every item drawn, once per draw
    self.firsts: list[Item] = []  # the items it sampled for the first time
    self.expired: list[Item] = []  # items that left the table, their chunks still held
    self.epoch = table._epoch  # what it took belongs to this epoch (see Table._forget)

  def sample(self, num_samples: int = 1, timeout: Timeout = None) -> list[SampledItem]:
    """Samples as `Table.sample` does, as part of this transaction."""
    return self.table._take(self, num_samples, timeout)

  def __enter__(self) -> Sampling:
    return self

  def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
    if exc_type is None:
      self.table._commit(self)
    else:
      self.table._undo(self)

"""The replay server: tables sharing one ChunkStore, served over courier.

`Server(tables, port)` is Reverb's `reverb.Server`: it serves the tables to
`replay.Client`s (client.py) without any program around it. `ReplayNode`
(launchpad/nodes/replay.py) serves the same service as a node of a program.

What travels: an insert sends, per batch of items of one structure, one
stacked array per column (numpy arrays go out of band, so one buffer per
column whatever the batch size). The server stores each stacked column once
as one chunk, and every item of the batch, in every table it goes to,
references its row of that chunk: data is stored once however many tables
get an item. A chunk is freed with the last item that references it, so
a batch's chunk lives as long as the longest-lived item of the batch.
Items keep their structure (structure.py), so samples come back nested as
they were inserted. A TrajectoryWriter (writer.py) instead sends chunks of
steps and items slicing them (`insert_trajectories`), holding and releasing
its own references to its chunks under a lease: a writer that makes no call
for `writer_lease_seconds` (its process died) loses them.

Input is checked completely (tables exist, priorities valid, data matches
every target table's signature) before anything changes, so bad input
raises ValueError and leaves every table as it was. Each run of items goes
into each of its tables with Table.insert_many (one lock hold per run the
rate limiter allows). Rate limiting is per table, as in Reverb: a run sent
to several tables goes into each in turn, and a RateLimiterTimeoutError or
TableClosedError from one table leaves the inserts that already happened in
place (the error's notes say how many).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from launchpad import timeouts
from launchpad.courier import server as courier_server
from launchpad.replay import checkpoint as checkpoint_lib
from launchpad.replay import ring as ring_lib
from launchpad.replay import row_runs, selectors, stacking
from launchpad.replay import structure as structure_lib
from launchpad.replay.chunk_store import ChunkStore, ColumnSpec, check_key, new_key, new_keys
from launchpad.replay.client import Client
from launchpad.replay.errors import RateLimiterTimeoutError, ReplayError, TableClosedError
from launchpad.replay.item import SampledItem
from launchpad.replay.table import Table
from launchpad.replay.table_info import TableInfo
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

# How long stop() waits for calls woken by closing the tables to send their replies.
DRAIN_SECONDS = 5.0
# How long a trajectory writer's chunks outlive its last call (see insert_trajectories).
WRITER_LEASE_SECONDS = 60.0


def build_tables(tables: Sequence[Table | Mapping[str, Any]]) -> tuple[ChunkStore, list[Table]]:
  """The tables a server serves, all on one ChunkStore, and that store.

  Tables that already share one ChunkStore (as a single table always does)
  are served as they are: the caller's objects then change. Otherwise
  (the usual case: each Table made its own store) each table is rebuilt from
  its snapshot on a new shared store, so the objects given are left alone
  and not served. Snapshots (Table.snapshot()) are accepted too: that is how
  a ReplayNode ships its tables to its worker.

  Raises:
    ValueError: no tables, two tables with one name, or a bad snapshot.
    TypeError: an entry is neither a Table nor a snapshot.
  """
  tables = list(tables)
  if not tables:
    raise ValueError("a replay server needs at least one table")
  for table in tables:
    if not isinstance(table, Table | Mapping):
      raise TypeError(f"expected replay Tables (or their snapshots), got {table!r}")
  names = [t.name if isinstance(t, Table) else t.get("name") for t in tables]
  duplicates = sorted({str(n) for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"table names must be unique; repeated: {', '.join(duplicates)}")
  stores = {id(t.chunk_store) for t in tables if isinstance(t, Table)}
  if all(isinstance(t, Table) for t in tables) and len(stores) == 1:
    return tables[0].chunk_store, tables
  store = ChunkStore()
  built = [
    Table.from_snapshot(t.snapshot() if isinstance(t, Table) else t, chunk_store=store)
    for t in tables
  ]
  return store, built


class ReplayService:
  """The object a replay server serves: its public methods are the RPC API.

  Clients call it through `replay.Client`, which packs arguments as these
  methods expect; call those, not these. Every method is thread safe.

  Args:
    tables: the tables (or snapshots) to serve; see `build_tables`.
    checkpoint_dir: where checkpoints go; the tables are restored from the
      newest complete one there, after the temporary files that interrupted
      checkpoints left there are removed.
    writer_lease_seconds: how long the chunks a trajectory writer holds
      outlive its last call (see insert_trajectories).
    register_close: called once, when the service is ready, with the
      function that closes it (every table closes, so blocked and later
      inserts and samples get TableClosedError, and writer leases stop being
      reaped), for an owner that calls it when it stops: a ReplayNode passes
      `lp.register_stop_handler`. Closing is not a method because this
      object's public methods are what clients may call.
  """

  def __init__(
    self,
    tables: Sequence[Table | Mapping[str, Any]],
    checkpoint_dir: str | None = None,
    writer_lease_seconds: float = WRITER_LEASE_SECONDS,
    register_close: Callable[[Callable[[], None]], Any] | None = None,
  ):
    self._lease_seconds = timeouts.positive(writer_lease_seconds, "writer_lease_seconds")
    self._store, built = build_tables(tables)
    self._tables: dict[str, Table] = {t.name: t for t in built}
    # Trajectory writer id -> its lease on the chunks it holds (see insert_trajectories).
    self._writers: dict[int, _Lease] = {}
    self._writers_lock = threading.Lock()
    self._reaper: threading.Thread | None = None
    self._closing = threading.Event()
    self._checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
    self._checkpoint_lock = threading.Lock()
    self._restored_from: str | None = None
    self._rings = ring_lib.Rings()  # of same-host streams (ring.py)
    if self._checkpoint_dir is not None:
      checkpoint_lib.remove_stale_temp_files(self._checkpoint_dir)  # crashes' leftovers
      self._restore_latest()
    if register_close is not None:
      register_close(self._close)

  # In-process access (attributes, not methods: clients cannot call them).

  @property
  def tables(self) -> dict[str, Table]:
    """The served tables by name."""
    return dict(self._tables)

  @property
  def chunk_store(self) -> ChunkStore:
    """The store of data the tables share."""
    return self._store

  @property
  def restored_from(self) -> str | None:
    """The checkpoint the tables were restored from on start, or None."""
    return self._restored_from

  # RPC methods.

  def insert(
    self,
    groups: Sequence[tuple[Any, Mapping[str, np.ndarray], Mapping[str, Any]]],
    timeout: float | None = None,
  ) -> list[int]:
    """Inserts items; returns their keys (one key per item, the same in every table).

    Args:
      groups: (structure, columns, priorities) per run of items of one
        structure: `columns` maps each column to the items' arrays stacked
        along a new first axis (stored as one chunk, each item a row of it);
        `priorities` maps each table the items go to to their priority there,
        one number for all or one per item; `structure` (structure.py) is how
        an item's columns nest.
      timeout: seconds to wait for the rate limiters, for the whole call.
    """
    deadline = timeouts.Deadline(timeouts.validate(timeout), "a replay call")
    prepared = [self._prepare(*_triple(group)) for group in groups]
    total = sum(count for *_, count in prepared)
    chunk_keys: list[int] = []
    keys: list[int] = []
    try:
      for structure, arrays, targets, count in prepared:
        columns: dict[str, int] = {}
        for column, array in arrays.items():
          columns[column] = chunk_key = new_key()
          self._store.put(chunk_key, array, copy=False)
          chunk_keys.append(chunk_key)
        group_keys = new_keys(count)
        for table, priorities in targets.items():
          try:
            table.insert_many(group_keys, priorities, columns, deadline.remaining(), structure)
          except ReplayError as e:
            e.add_note(
              f"the call's first {len(keys)} of {total} items were inserted in all their tables; "
              f"a run of {count} items goes into its tables one table after another"
            )
            raise
        keys += group_keys
      return keys
    finally:
      if chunk_keys:
        self._store.release(chunk_keys)  # the items hold their own references

  def insert_trajectories(
    self,
    writer: int,
    chunks: Sequence[tuple[int, np.ndarray]],
    items: Sequence[tuple[int, str, float, Mapping[str, Any], Any, Sequence[int]]],
    releases: Sequence[int] = (),
    timeout: float | None = None,
    held: Sequence[int] = (),
  ) -> dict[str, Any]:
    """A TrajectoryWriter's flush (writer.py): stores chunks, inserts items, drops chunks.

    In order: each new chunk is stored and `writer` holds one reference to
    it; each item (key, table, priority, column -> [(chunk_key, slice or
    index), ...], structure, the ids of the episodes its steps came from) is
    inserted, taking its own references; then, if every item went in, the
    writer's references to `releases` are dropped. Chunks are stored once
    however many items share them.

    Leases: the writer's references last `writer_lease_seconds` after its
    last call ends, so a writer whose process dies does not keep its chunks
    for good. `held` lists the chunks the writer believes it holds: those
    its lease no longer holds are taken again if still stored, and if any
    is gone the call does nothing and returns them as "missing", for the
    writer to send again.

    Resending is harmless, so a writer may retry a call whose outcome it
    does not know: a chunk the writer already holds is not stored again, a
    release of a chunk it does not hold is ignored, and an item key already
    in its table only updates the priority (Table.insert).

    Returns:
      {"inserted": n, "rejected": None or n, "error": None or an exception,
      "missing": chunk keys}: the first n items were inserted. The error is
      returned, not raised, so that the writer learns how far the call got:
      RateLimiterTimeoutError or TableClosedError stopped it at item n, or
      item n was rejected ("rejected": n) with a ValueError (unknown table,
      bad priority, references or structure, signature mismatch). The chunks
      are stored either way.
    """
    deadline = timeouts.Deadline(timeouts.validate(timeout), "a replay call")
    writer = check_key(writer, "writer id")
    arrays: dict[int, np.ndarray] = {}
    for chunk_key, value in chunks:
      chunk_key = check_key(chunk_key, "chunk key")
      array = np.asarray(value)
      if array.ndim < 1 or array.shape[0] < 1 or array.dtype.hasobject:
        raise ValueError(f"chunk {chunk_key}: expected a numeric array of steps, got {value!r}")
      arrays[chunk_key] = array
    releases = {check_key(k, "released chunk key") for k in releases}
    held = [check_key(k, "held chunk key") for k in held]
    missing = self._take_lease(writer, arrays, held)
    if missing:
      return {"inserted": 0, "rejected": None, "error": None, "missing": missing}
    inserted = 0
    by_item = 0  # items before this go one by one: their run was refused
    try:
      while inserted < len(items):
        try:
          run = row_runs.find(items, inserted) if inserted >= by_item else None
          if run is not None:
            done = self._insert_run(run, deadline)
            if done:
              inserted += done
              continue
            by_item = run.end  # Table.insert tells which item is wrong, and why
          self._insert_item(items[inserted], deadline)
        except ValueError as e:
          return {"inserted": inserted, "rejected": inserted, "error": e, "missing": []}
        except ReplayError as e:
          return {"inserted": inserted, "rejected": None, "error": e, "missing": []}
        inserted += 1
    finally:
      self._end_lease(writer, releases if inserted == len(items) else set())
    return {"inserted": inserted, "rejected": None, "error": None, "missing": []}

  def _insert_item(self, item: Any, deadline: timeouts.Deadline) -> None:
    """One item of insert_trajectories, with Table.insert."""
    if not isinstance(item, tuple | list) or len(item) != 6:
      raise ValueError(
        f"expected an item (key, table, priority, data refs, structure, episodes), got {item!r}"
      )
    item_key, name, priority, refs, structure, episodes = item
    self._table(name).insert(item_key, priority, refs, deadline.remaining(), structure, episodes)

  def _insert_run(self, run: row_runs.RowRun, deadline: timeouts.Deadline) -> int:
    """Inserts `run` with Table.insert_rows: how many of its items went in
    (as many as the rate limiter allowed at once), 0 if it was refused
    (ValueError: nothing changed)."""
    try:
      return self._table(run.table).insert_rows(
        run.keys,
        run.priorities,
        run.rows,
        run.columns,
        deadline.remaining(),
        run.structure,
        run.episodes,
      )
    except ValueError:
      return 0

  def sample(
    self, table: str, num_samples: int = 1, timeout: float | None = None, stack: bool = False
  ) -> dict[str, Any]:
    """Samples `num_samples` items, waiting up to `timeout` in all.

    Returns as many items as the rate limiter allowed within the timeout (at
    least one: with none it raises RateLimiterTimeoutError, or
    TableClosedError), since items already sampled have counted as sampled.
    The call is one sampling transaction (Table.sampling) that includes
    building the reply: if that fails (items that cannot be stacked, a
    MemoryError), the call's samples are undone and nothing changed.

    Returns:
      a dict: "info" (key, probability, table_size, priority, times_sampled:
      one array each, one entry per item), and with `stack` "data" (column
      -> the items' arrays stacked) and "structure" (the items' one
      structure), otherwise "data" (one column dict per item) and
      "structures" (one per item).
    """
    target = self._table(table)
    deadline = timeouts.Deadline(timeouts.validate(timeout), "a replay call")
    with target.sampling() as sampling:
      items = _draw(sampling, num_samples, deadline)
      return _sample_reply(table, items) if stack else _sample_list(items)

  def stream_sample(
    self, table: str, num_samples: int, timeout: float | None, ring: Any
  ) -> dict[str, Any]:
    """A stream's `sample` with `stack`, its batch written into the stream's ring if it can be.

    `ring` is the stream's ring.Reader.request(): it returns the slots the
    learner dropped and, until the stream has a ring, says where to send it.
    The reply is `sample`'s, except that a batch written into a free slot of
    the ring, its info too, is not in it: "slot", "rows", "layout" and
    "info_layout" (column, dtype, row shape, offset) say where it lies. With no ring or no slot free the batch is
    in "data" as `sample` sends it (ring.py).
    """
    target = self._table(table)
    deadline = timeouts.Deadline(timeouts.validate(timeout), "a replay call")
    with target.sampling() as sampling:
      items = _draw(sampling, num_samples, deadline)
      specs = _stack_specs(table, items)
      placed, data_end = ring_lib.layout(specs, len(items))
      info_placed, end = ring_lib.layout(_INFO_SPECS, len(items), data_end)
      taken = self._rings.take(
        ring, _slot_bytes(specs, num_samples) if len(items) < num_samples else end
      )
      if taken is None or end > taken[0].slot_bytes:
        return _sample_reply(table, items, specs)
      target_ring, slot = taken
      try:
        target_ring.write(slot, placed, {c: [i.data[c] for i in items] for c in specs})
        target_ring.copy(slot, info_placed, _sample_info(items))
      except BaseException:
        target_ring.free.append(slot)
        raise
      return {
        "structure": items[0].structure,
        "slot": slot,
        "rows": len(items),
        "layout": placed,
        "info_layout": info_placed,
      }

  def mutate_priorities(
    self,
    table: str,
    updates: Mapping[int, float] | None = None,
    deletes: Sequence[int] | None = None,
  ) -> None:
    """Updates priorities and deletes items of one table (keys not in it are ignored)."""
    self._table(table).mutate_priorities(updates or {}, deletes or ())

  def reset(self, table: str) -> None:
    """Removes every item of a table and zeroes its rate limiter's counters."""
    self._table(table).reset()

  def server_info(self) -> dict[str, TableInfo]:
    """Table name -> Table.info(): a TableInfo (configuration, size, counters, limiter state)."""
    return {name: table.info() for name, table in self._tables.items()}

  def table_stats(self) -> dict[str, dict[str, int]]:
    """Table name -> Table.stats(): size, max_size, num_inserts, num_samples (cheap)."""
    return {name: table.stats() for name, table in self._tables.items()}

  def chunk_store_info(self) -> dict[str, int]:
    """The shared store's num_chunks, nbytes and num_references."""
    return self._store.info()

  def checkpoint(self) -> str:
    """Writes a checkpoint of every table to the checkpoint directory; returns its path.

    Raises:
      ValueError: the server has no checkpoint directory.
    """
    if self._checkpoint_dir is None:
      raise ValueError("this replay server has no checkpoint_dir: it cannot write checkpoints")
    with self._checkpoint_lock:
      return checkpoint_lib.write(self._checkpoint_dir, self._tables.values())

  # Not served (private).

  def _restore_latest(self) -> None:
    """Restores the tables from the newest complete checkpoint in the directory, if any."""
    found = checkpoint_lib.load_latest(self._checkpoint_dir)
    if found is None:
      return
    path, data = found
    snapshots = checkpoint_lib.table_snapshots(data)
    for name, snapshot in snapshots.items():
      table = self._tables.get(name)
      if table is None:
        log.warning(
          "replay checkpoint %s: table %r is not served; its items are dropped", path, name
        )
        continue
      try:
        table.restore(snapshot)
      except ValueError as e:
        raise ValueError(f"cannot restore replay checkpoint {path}: {e}") from None
    for name in self._tables.keys() - snapshots.keys():
      log.warning("replay checkpoint %s has no table %r: it starts empty", path, name)
    self._restored_from = path
    log.info("replay server: restored tables %s from %s", sorted(snapshots), path)

  def _close(self) -> None:
    """Closes every table: blocked and later inserts and samples get TableClosedError."""
    self._closing.set()
    self._rings.close()
    for table in self._tables.values():
      table.close()

  def _take_lease(
    self, writer: int, arrays: Mapping[int, np.ndarray], held: list[int]
  ) -> list[int]:
    """Starts a writer's call: renews its lease, stores its new chunks; returns chunks gone."""
    with self._writers_lock:
      lease = self._writers.get(writer)
      if lease is None:
        lease = self._writers[writer] = _Lease(time.monotonic() + self._lease_seconds)
        self._start_reaper()
      lost = [k for k in held if k not in lease.held]
      if lost:  # the lease expired; chunks still stored (for items) are held again
        try:
          self._store.acquire(lost)
        except KeyError:
          if not lease.held and not lease.active:
            del self._writers[writer]
          return [k for k in lost if k not in self._store] or lost
        lease.held.update(lost)
      for chunk_key, array in arrays.items():
        if chunk_key not in lease.held:
          self._store.put(chunk_key, array, copy=False)
          lease.held.add(chunk_key)
      lease.active += 1
      return []

  def _end_lease(self, writer: int, releases: set[int]) -> None:
    """Ends a writer's call: drops the released chunks, and the lease runs from now."""
    with self._writers_lock:
      lease = self._writers[writer]
      dropped = [k for k in releases if k in lease.held]
      lease.held.difference_update(dropped)
      self._store.release(dropped)
      lease.active -= 1
      lease.expires = time.monotonic() + self._lease_seconds
      if not lease.held and not lease.active:
        del self._writers[writer]

  def _start_reaper(self) -> None:
    """(writers lock held) Starts the thread that ends expired leases, once."""
    if self._reaper is None:
      self._reaper = threading.Thread(target=self._reap, name="replay-leases", daemon=True)
      self._reaper.start()

  def _reap(self) -> None:
    """Releases the chunks of writers whose lease expired, until the service closes."""
    interval = min(1.0, self._lease_seconds / 4)
    while not self._closing.wait(interval):
      now = time.monotonic()
      with self._writers_lock:
        expired = [
          w for w, lease in self._writers.items() if not lease.active and lease.expires <= now
        ]
        for writer in expired:
          lease = self._writers.pop(writer)
          self._store.release(lease.held)
          log.info(
            "replay server: trajectory writer %x made no call for %g s: released its %d chunks",
            writer,
            self._lease_seconds,
            len(lease.held),
          )

  def _table(self, name: Any) -> Table:
    table = self._tables.get(name) if isinstance(name, str) else None
    if table is None:
      raise ValueError(
        f"no table named {name!r} on this replay server; tables: "
        f"{', '.join(map(repr, self._tables))}"
      )
    return table

  def _prepare(
    self, structure: Any, columns: Any, priorities: Any
  ) -> tuple[Any, dict[str, np.ndarray], dict[Table, float | list[float]], int]:
    """Checks one run of items completely: (structure, arrays, table -> priorities, count)."""
    if not isinstance(columns, Mapping) or not columns:
      raise ValueError(f"item data must be a non-empty mapping column -> array, got {columns!r}")
    arrays: dict[str, np.ndarray] = {}
    specs: dict[str, ColumnSpec] = {}
    count = None
    for column, value in columns.items():
      if not isinstance(column, str):
        raise ValueError(f"column names must be strings, got {column!r}")
      array = np.asarray(value)
      if count is None and array.ndim:
        count = array.shape[0]
      if array.ndim < 1 or array.shape[0] != count or not count:
        raise ValueError(
          f"column {column!r}: expected {count or 'one or more'} stacked items, got shape "
          f"{array.shape}"
        )
      if array.dtype.hasobject:
        raise ValueError(
          f"column {column!r}: dtype {array.dtype} cannot be stored; use numeric, bool or "
          "string arrays"
        )
      arrays[column] = array
      specs[column] = ColumnSpec(array.dtype, array.shape[1:])
    if structure is not None:
      structure_lib.check(structure, arrays)
    if not isinstance(priorities, Mapping) or not priorities:
      raise ValueError(
        f"priorities must be a non-empty mapping table -> priority, got {priorities!r}"
      )
    targets: dict[Table, float | list[float]] = {}
    for name, values in priorities.items():
      table = self._table(name)
      try:
        if isinstance(values, Sequence | np.ndarray) and not isinstance(values, str):
          targets[table] = selectors.check_priorities(values, count)
        else:
          targets[table] = selectors.check_priority(values)  # one for every item
      except ValueError as e:
        raise ValueError(f"table {name!r}: {e}") from None
      table.check_signature(specs)
    return structure, arrays, targets, count


class _Lease:
  """The chunks a trajectory writer holds, until `expires` once no call of it is running."""

  __slots__ = ("active", "expires", "held")

  def __init__(self, expires: float):
    self.held: set[int] = set()
    self.active = 0  # calls running
    self.expires = expires


def _triple(group: Any) -> tuple[Any, Any, Any]:
  if not isinstance(group, tuple | list) or len(group) != 3:
    raise ValueError(f"expected a group (structure, columns, priorities), got {group!r}")
  return tuple(group)


# The info fields of sampled items: dtype and shape of one item's.
_INFO_SPECS = {
  "key": (np.dtype(np.uint64), ()),
  "probability": (np.dtype(np.float64), ()),
  "table_size": (np.dtype(np.int64), ()),
  "priority": (np.dtype(np.float64), ()),
  "times_sampled": (np.dtype(np.int64), ()),
}


def _sample_info(items: Sequence[SampledItem]) -> dict[str, np.ndarray]:
  """The sampled items' info fields, one array each."""
  key, _, probability, table_size, priority, times_sampled, _ = zip(*items, strict=True)
  return {
    "key": np.array(key, dtype=np.uint64),
    "probability": np.array(probability, dtype=np.float64),
    "table_size": np.array(table_size, dtype=np.int64),
    "priority": np.array(priority, dtype=np.float64),
    "times_sampled": np.array(times_sampled, dtype=np.int64),
  }


def _sample_list(items: Sequence[SampledItem]) -> dict[str, Any]:
  """A `sample` reply: the items one by one."""
  return {
    "info": _sample_info(items),
    "data": [i.data for i in items],
    "structures": [i.structure for i in items],
  }


def _draw(sampling: Any, num_samples: int, deadline: timeouts.Deadline) -> list[SampledItem]:
  """Up to `num_samples` items of one sampling transaction: at least one, else the limiter's error."""
  items = sampling.sample(num_samples, timeout=deadline.remaining())
  while len(items) < num_samples:
    try:
      items += sampling.sample(num_samples - len(items), timeout=deadline.remaining())
    except (RateLimiterTimeoutError, TableClosedError):
      break  # the items already drawn have been counted as sampled: return them
  return items


def _stack_specs(
  table: str, items: Sequence[SampledItem]
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
  """Column -> (dtype, row shape) of items that stack; ValueError if they differ."""
  first = items[0]
  specs = {c: (a.dtype, a.shape) for c, a in first.data.items()}
  for item in items[1:]:
    if item.structure is not first.structure and item.structure != first.structure:
      raise ValueError(
        f"table {table!r}: the sampled items do not all have the same structure, so they "
        "cannot be stacked; use sample()"
      )
    data = item.data
    same = len(data) == len(specs)
    for column, (dtype, shape) in specs.items():  # a plain loop: this runs for every item
      array = data.get(column)
      if (
        array is None or array.shape != shape or (array.dtype is not dtype and array.dtype != dtype)
      ):
        same = False
        break
    if not same:
      found = {c: (a.dtype, a.shape) for c, a in data.items()}
      raise ValueError(
        f"table {table!r}: the sampled items do not all have the same columns, dtypes and "
        f"shapes ({specs} and {found}), so they cannot be stacked; use sample()"
      )
  return specs


def _slot_bytes(specs: dict[str, tuple[np.dtype, tuple[int, ...]]], rows: int) -> int:
  """The bytes a ring slot needs for a batch of `rows` items of `specs`, with their info."""
  return ring_lib.layout(_INFO_SPECS, rows, ring_lib.layout(specs, rows)[1])[1]


def _sample_reply(
  table: str,
  items: Sequence[SampledItem],
  specs: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None,
) -> dict[str, Any]:
  """A `sample_batch` reply: the items' columns stacked, or ValueError if they
  differ (`specs`: their _stack_specs, if the caller has them)."""
  specs = _stack_specs(table, items) if specs is None else specs
  data = {c: stacking.stack([i.data[c] for i in items]) for c in specs}
  return {"info": _sample_info(items), "data": data, "structure": items[0].structure}


class Server:
  """Serves replay tables to `replay.Client`s, without a program (Reverb's `reverb.Server`).

  Args:
    tables: the tables to serve (Table objects, names unique); see
      `build_tables` for how they come to share one ChunkStore.
    port: the port to bind; 0 lets the system choose.
    host: the interface to bind; loopback unless other hosts must connect.
    secret: the bytes clients must know to connect; None generates one
      (`server.secret`), which clients are then given.
    checkpoint_dir: where checkpoints go (checkpoint.py). If it holds a
      complete checkpoint, the tables are restored from the newest one on
      start; `Client.checkpoint()` (or `server.checkpoint()`) writes one.
    writer_lease_seconds: how long a trajectory writer's chunks outlive its
      last call, so that a writer that died does not hold them for good.
    tls: serve TCP clients over TLS (launchpad.TlsConfig); clients then
      need the same settings.
  """

  def __init__(
    self,
    tables: Sequence[Table],
    port: int = 0,
    host: str = "127.0.0.1",
    secret: bytes | None = None,
    checkpoint_dir: str | None = None,
    writer_lease_seconds: float = WRITER_LEASE_SECONDS,
    tls: TlsConfig | None = None,
  ):
    self.secret: bytes = os.urandom(32) if secret is None else secret
    self.tls = tls
    self._service = ReplayService(
      tables, checkpoint_dir=checkpoint_dir, writer_lease_seconds=writer_lease_seconds
    )
    self._courier = courier_server.Server(
      self._service, secret=self.secret, label="replay", host=host, port=port, tls=tls
    )
    self.address: str = self._courier.start()
    self._stopped = False

  @property
  def tables(self) -> dict[str, Table]:
    """The served tables by name (in-process access, e.g. for checkpoints)."""
    return self._service.tables

  @property
  def chunk_store(self) -> ChunkStore:
    return self._service.chunk_store

  @property
  def local_address(self) -> str | None:
    """The abstract Unix socket clients of this host may use ('unix:@...'), or None.

    Streams over it get their batches through shared memory (ring.py).
    """
    return self._courier.local_address

  @property
  def restored_from(self) -> str | None:
    """The checkpoint the tables were restored from on start, or None."""
    return self._service.restored_from

  def table_stats(self) -> dict[str, dict[str, int]]:
    """Table name -> {"size", "max_size", "num_inserts", "num_samples"} (Table.stats()).

    Cheap (one short lock hold per table), for live views in this process;
    num_inserts and num_samples count over the tables' life, so two readings
    give rates.
    """
    return self._service.table_stats()

  def checkpoint(self) -> str:
    """Writes a checkpoint (see ReplayService.checkpoint); returns its path."""
    return self._service.checkpoint()

  def localhost_client(self, timeout: float | None = None) -> Client:
    """A `replay.Client` of this server from this host (Reverb's `Server.localhost_client`)."""
    return Client(self.address, secret=self.secret, timeout=timeout, tls=self.tls)

  def stop(self) -> None:
    """Closes every table (blocked callers get TableClosedError), then stops serving. Idempotent."""
    if self._stopped:
      return
    self._stopped = True
    self._service._close()
    if not self._courier.drain(DRAIN_SECONDS):
      log.warning("replay server: calls still running %g s after closing the tables", DRAIN_SECONDS)
    self._courier.stop()

  def __enter__(self) -> Server:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.stop()

  def __repr__(self) -> str:
    return f"<replay.Server at {self.address}, tables {list(self._service.tables)}>"

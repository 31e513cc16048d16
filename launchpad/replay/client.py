"""The replay client: Reverb's `reverb.Client`, over courier.

    server = replay.Server([replay.Table.queue("q", 100)])
    client = replay.Client(server.address, secret=server.secret)
    client.insert({"obs": obs, "action": 3}, priorities={"q": 1.0})
    [sample] = client.sample("q")           # sample.data["obs"], sample.info.key

Data: an item is a dict column -> array (or scalar), or any nesting of dicts,
lists, tuples and namedtuples: it is flattened to columns named by their
path joined with "/" ({"obs": {"pos": x}, "r": [a, b]} -> "obs/pos", "r/0",
"r/1"; a bare array is the column "data"), and its structure travels with
it, so samples come back nested as the item was (structure.py).

Speed: numpy arrays travel out of band. `insert_batch` stacks the items of
one structure into one array per column: one RPC and one chunk per column
for the whole batch, which the server inserts under one lock hold per table
(Table.insert_many). `sample_batch` returns the items stacked per column.

Streams: `stream(table, batch_size)` keeps sample_batch calls in flight
(stream.py), over connections of its own, so a learner gets batches without
waiting a round trip for each. A stream of a server on the same host (a
'unix:' address, or a ReplayNode's handle) gets its batches through shared
memory (ring.py): read-only arrays of a ring of slots the server fills.

Timeouts: every call that may block on a rate limiter takes `timeout`
(seconds or a timedelta; None waits as long as it takes), defaulting to the
client's. The RPC itself is given that timeout plus RPC_MARGIN_SECONDS, so
a limiter timeout arrives as RateLimiterTimeoutError, not as a courier
CallTimeoutError. Errors: unknown tables, bad priorities and data that do
not match a table's signature raise ValueError and change nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from launchpad import timeouts
from launchpad.courier import client as courier_client
from launchpad.courier import protocol
from launchpad.replay import ring as ring_lib
from launchpad.replay import stacking
from launchpad.replay import structure as structure_lib
from launchpad.replay.stream import Stream
from launchpad.replay.table import MAX_SAMPLES_PER_CALL
from launchpad.replay.table_info import TableInfo
from launchpad.timeouts import Timeout
from launchpad.tls import TlsConfig

if TYPE_CHECKING:
  from launchpad.replay.writer import TrajectoryWriter

# Added to a call's own timeout to bound the RPC round trip around it.
RPC_MARGIN_SECONDS = 30.0


class SampleInfo(NamedTuple):
  """What the table knew of a sampled item (arrays, one entry per item, in a batch)."""

  key: Any
  probability: Any
  table_size: Any
  priority: Any
  times_sampled: Any
  """Including this sample."""


class ReplaySample(NamedTuple):
  """One sampled item (`sample`), or a batch of them stacked (`sample_batch`)."""

  info: SampleInfo
  data: Any
  """The item's data nested as it was inserted (a dict of columns, a tuple, ...)."""


def batch_from_reply(reply: Mapping[str, Any]) -> ReplaySample:
  """The ReplaySample of a stacked sample reply (ReplayService.sample with stack)."""
  return ReplaySample(
    SampleInfo(**reply["info"]), structure_lib.unflatten(reply["structure"], reply["data"])
  )


def _flatten_item(item: Any) -> tuple[dict[str, np.ndarray], tuple]:
  """(columns, run key) of an item: items of equal run keys stack into one run.

  The run key is (structure, the columns' dtypes and shapes). A flat dict of
  arrays (the common case) skips the structure walk.
  """
  if type(item) is dict and item:
    specs = []
    for key, value in item.items():
      if type(value) is not np.ndarray or type(key) is not str or value.dtype.hasobject:
        break
      specs.append((value.dtype, value.shape))
    else:
      return item, (structure_lib.flat_dict_structure(tuple(item)), tuple(specs))
  columns, structure = structure_lib.flatten(item)
  return columns, (structure, tuple((a.dtype, a.shape) for a in columns.values()))


def _groups(
  items: list[tuple[dict[str, np.ndarray], tuple]],
  priorities: Mapping[str, float] | list[dict[str, float]],
) -> list[tuple[Any, dict[str, np.ndarray], dict[str, Any]]]:
  """Runs of consecutive items of one run key (and tables), each stacked into one array per column.

  Each run is (structure, column -> stacked array, table -> priority or
  per-item priorities).
  """
  shared = isinstance(priorities, Mapping)
  keys = (
    [key for _, key in items]
    if shared
    else [(key, tuple(p)) for (_, key), p in zip(items, priorities, strict=True)]
  )
  groups = []
  start = 0
  for end in range(1, len(items) + 1):
    if end < len(items) and keys[end] == keys[start]:
      continue
    columns, (structure, _) = items[start]
    if end - start == 1:
      stacked = {c: a[np.newaxis] for c, a in columns.items()}
    else:
      stacked = {c: stacking.stack([item[0][c] for item in items[start:end]]) for c in columns}
    if shared:
      run_priorities: dict[str, Any] = dict(priorities)
    else:
      run_priorities = {t: [p[t] for p in priorities[start:end]] for t in priorities[start]}
    groups.append((structure, stacked, run_priorities))
    start = end
  return groups


def _priorities(priorities: Any) -> dict[str, float]:
  if not isinstance(priorities, Mapping) or not priorities:
    raise ValueError(f"priorities must be a non-empty dict table -> priority, got {priorities!r}")
  return dict(priorities)


class Client:
  """A client of a replay server (replay.Server or a ReplayNode).

  Args:
    address_or_client: the server's 'host:port', or a courier Client of it
      (what a ReplayNode's handle gives is already a replay Client).
    secret: the server's secret (`server.secret`); needed with an address.
    timeout: the default timeout of every call (see the module docstring).
    tls: the server's TLS settings (`server.tls`), if it serves over TLS.
    connect: makes a new courier Client of the same server, for streams over
      connections of their own; given an address, the client makes its own.
      Without it, a client made from a courier Client streams over that
      client's one connection for futures.

  Streams offer the server a ring of shared batch slots (ring.py) unless
  the client was given a TCP address: a server on the same host takes it
  (a courier Client, e.g. a ReplayNode's handle, reaches a same-host node
  over its Unix socket), one elsewhere cannot reach the stream's socket.
  """

  def __init__(
    self,
    address_or_client: str | courier_client.Client,
    secret: bytes | None = None,
    timeout: Timeout = None,
    tls: TlsConfig | None = None,
    connect: Callable[[], courier_client.Client] | None = None,
  ):
    if isinstance(address_or_client, courier_client.Client):
      self._courier = address_or_client
      self._rings = True
    elif isinstance(address_or_client, str):
      if secret is None:
        raise ValueError("a replay Client given an address needs the server's secret")
      address = address_or_client

      def connect() -> courier_client.Client:
        return courier_client.Client(address, secret=secret, label="replay", tls=tls)

      self._courier = connect()
      self._rings = address.startswith(protocol.UNIX_PREFIX)
    else:
      raise TypeError(f"expected a server address or a courier Client, got {address_or_client!r}")
    self._connect = connect
    self._timeout = timeouts.validate(timeout)

  def insert(self, data: Any, priorities: Mapping[str, float], timeout: Timeout = None) -> int:
    """Inserts one item into every table of `priorities` (table -> priority); returns its key.

    The data is stored once on the server, however many tables get the item.
    Raises RateLimiterTimeoutError if a table's limiter does not allow the
    insert within `timeout`.
    """
    return self.insert_batch([data], _priorities(priorities), timeout)[0]

  def insert_batch(
    self,
    items: Sequence[Any],
    priorities: Mapping[str, float] | Sequence[Mapping[str, float]],
    timeout: Timeout = None,
  ) -> list[int]:
    """Inserts many items in one RPC; returns their keys, in order.

    Args:
      items: the items' data.
      priorities: table -> priority for every item, or one such dict per item.
      timeout: for the whole batch.
    """
    if isinstance(priorities, Mapping):
      priorities = _priorities(priorities)
    else:
      priorities = [_priorities(p) for p in priorities]
      if len(priorities) != len(items):
        raise ValueError(f"{len(items)} items but {len(priorities)} priority dicts")
    flat = [_flatten_item(item) for item in items]
    if not flat:
      return []
    limit = self._limit(timeout)
    return self._call(limit).insert(_groups(flat, priorities), limit)

  def sample(self, table: str, num_samples: int = 1, timeout: Timeout = None) -> list[ReplaySample]:
    """Samples `num_samples` items in one RPC (as many as the limiter allows within `timeout`).

    Raises RateLimiterTimeoutError when not one sample was allowed in time,
    TableClosedError when the server stops.
    """
    limit = self._limit(timeout)
    reply = self._call(limit).sample(table, num_samples, limit, False)
    info = reply["info"]
    return [
      ReplaySample(
        SampleInfo(
          int(info["key"][i]),
          float(info["probability"][i]),
          int(info["table_size"][i]),
          float(info["priority"][i]),
          int(info["times_sampled"][i]),
        ),
        structure_lib.unflatten(structure, data),
      )
      for i, (data, structure) in enumerate(zip(reply["data"], reply["structures"], strict=True))
    ]

  def sample_batch(self, table: str, batch_size: int, timeout: Timeout = None) -> ReplaySample:
    """Samples up to `batch_size` items in one RPC, stacked: data column -> (n, ...) array.

    The info fields are arrays of n entries. The items must have the same
    columns, dtypes and shapes (ValueError otherwise).
    """
    limit = self._limit(timeout)
    return batch_from_reply(self._call(limit).sample(table, batch_size, limit, True))

  def stream(
    self,
    table: str,
    batch_size: int,
    *,
    max_in_flight_batches: int = 8,
    num_workers: int | None = None,
    timeout: Timeout = None,
  ) -> Stream:
    """An iterator of batches of `table`, sampled ahead (Reverb's dataset); see stream.py.

    Each batch is what `sample_batch(table, batch_size)` returns. Use it in a
    `with` block, or close() it: it keeps calls in flight until then.

    Args:
      table: the table to sample.
      batch_size: items per batch (up to: as many as the limiter allows).
      max_in_flight_batches: the most batches sampled ahead: calls sent and
        not answered, and batches received and not yet taken.
      num_workers: connections the calls are spread over (at most
        max_in_flight_batches), each with its own reader on the server;
        None: 1 for a stream that offers the server a ring (ring.py: its
        calls are short, and a second connection's thread only contends
        for the server's GIL) or for a client made from a courier Client
        without `connect`, else 2 (measured best on two cores over TCP,
        bench/replay_stream.py).
      timeout: the longest each next() waits for a batch (CallTimeoutError
        naming the table); None: the client's default.
    """
    _count(batch_size, "batch_size")
    _count(max_in_flight_batches, "max_in_flight_batches")
    if num_workers is None:
      num_workers = 1 if self._connect is None or self._rings else min(2, max_in_flight_batches)
    _count(num_workers, "num_workers")
    if batch_size > MAX_SAMPLES_PER_CALL:
      raise ValueError(
        f"batch_size must be at most replay.MAX_SAMPLES_PER_CALL ({MAX_SAMPLES_PER_CALL}), got "
        f"{batch_size}: a call's items are all in memory at once"
      )
    if num_workers > max_in_flight_batches:
      raise ValueError(
        f"num_workers ({num_workers}) must be at most max_in_flight_batches "
        f"({max_in_flight_batches}): a connection without a call in flight would be idle"
      )
    if num_workers > 1 and self._connect is None:
      raise ValueError(
        f"num_workers={num_workers}: this replay Client was made from a courier Client without "
        "`connect`, so it has one connection to stream over; use num_workers=1, or make the "
        "client from the server's address (or a ReplayNode's handle)."
      )
    limit = self._limit(timeout)
    rpc = None if limit is None else limit + RPC_MARGIN_SECONDS
    if self._connect is None:
      connections, owned = [self._courier], []  # not the stream's to close
    else:
      connections = owned = [self._connect() for _ in range(num_workers)]
    reader = self._ring_reader(table, max_in_flight_batches)
    if reader is not None:
      submitters = [_ring_submitter(c.with_timeout(rpc), reader) for c in connections]
      decode, on_close = functools.partial(_batch_from_ring, reader), _closer(owned, reader)
    else:
      submitters = [c.with_timeout(rpc).futures.sample for c in connections]
      decode, on_close = batch_from_reply, _closer(owned)
    return Stream(table, batch_size, submitters, decode, max_in_flight_batches, limit, on_close)

  def _ring_reader(self, table: str, max_in_flight_batches: int) -> ring_lib.Reader | None:
    """The ring a new stream offers its server (ring.py), or None: in band only."""
    if not self._rings:
      return None
    try:
      return ring_lib.Reader(table, max_in_flight_batches + ring_lib.EXTRA_SLOTS)
    except OSError:  # no descriptor for its socket: the stream's batches come in the replies
      return None

  def mutate_priorities(
    self,
    table: str,
    updates: Mapping[int, float] | None = None,
    deletes: Iterable[int] | None = None,
  ) -> None:
    """Sets priorities of items (key -> priority) and deletes items; unknown keys are ignored.

    Everything is checked first: a bad key or priority raises ValueError and
    changes nothing.
    """
    updates = {_key(k): float(p) for k, p in (updates or {}).items()}
    deletes = [_key(k) for k in (deletes or ())]
    self._call(self._timeout).mutate_priorities(table, updates, deletes)

  def reset(self, table: str) -> None:
    """Removes every item of `table` and zeroes its rate limiter's counters."""
    self._call(self._timeout).reset(table)

  def server_info(self, timeout: Timeout = None) -> dict[str, TableInfo]:
    """Table name -> TableInfo (Reverb's): configuration, size, counters, rate limiter state.

    A TableInfo is also a mapping with the keys this call's dicts had
    (`info["size"]`, `info["rate_limiter"]`, ...); see table_info.py.
    """
    return self._call(self._limit(timeout)).server_info()

  def table_stats(self, timeout: Timeout = None) -> dict[str, dict[str, int]]:
    """Table name -> size, max_size, num_inserts, num_samples (Table.stats(): cheap)."""
    return self._call(self._limit(timeout)).table_stats()

  def chunk_store_info(self, timeout: Timeout = None) -> dict[str, int]:
    """The server's shared chunk store: num_chunks, nbytes, num_references."""
    return self._call(self._limit(timeout)).chunk_store_info()

  def checkpoint(self, timeout: Timeout = None) -> str:
    """Has the server write a checkpoint of all its tables; returns the file's path.

    Raises ValueError if the server was started without a checkpoint_dir.
    """
    return self._call(self._limit(timeout)).checkpoint()

  def trajectory_writer(
    self, num_keep_alive_refs: int, timeout: Timeout = None, max_chunk_length: int = 256
  ) -> TrajectoryWriter:
    """A TrajectoryWriter (writer.py): appends steps, builds items from their history.

    Args:
      num_keep_alive_refs: how many of the latest steps items may reference.
      timeout: the default timeout of the writer's flushes (None: the client's).
      max_chunk_length: steps buffered per column before they are sent.
    """
    from launchpad.replay.writer import TrajectoryWriter  # writer.py imports this module

    return TrajectoryWriter(self, num_keep_alive_refs, timeout, max_chunk_length)

  def insert_trajectories(
    self,
    writer: int,
    chunks: Sequence[tuple[int, np.ndarray]],
    items: Sequence[tuple[int, str, float, Mapping[str, Any], Any]],
    releases: Sequence[int],
    timeout: Timeout = None,
    held: Sequence[int] = (),
    wait: bool = True,
  ) -> dict[str, Any] | Future:
    """The TrajectoryWriter's one RPC (see ReplayService.insert_trajectories); use the writer.

    With `wait` False, a Future of its reply (the writer's call for a full chunk)."""
    limit = self._limit(timeout)
    courier = self._call(limit)
    insert = courier.insert_trajectories if wait else courier.futures.insert_trajectories
    return insert(writer, chunks, items, releases, limit, held)

  def with_timeout(self, timeout: Timeout) -> Client:
    """A client on the same connections whose calls default to `timeout`."""
    client = Client(self._courier, timeout=timeout, connect=self._connect)
    client._rings = self._rings
    return client

  def close(self) -> None:
    """Closes the connections, those of every thread; later calls raise ClientClosedError."""
    self._courier.close()

  def _limit(self, timeout: Timeout) -> float | None:
    return self._timeout if timeout is None else timeouts.validate(timeout)

  def _call(self, limit: float | None) -> courier_client.Client:
    return self._courier.with_timeout(None if limit is None else limit + RPC_MARGIN_SECONDS)

  def __repr__(self) -> str:
    return f"<replay.Client of {self._courier!r}>"


def _key(key: Any) -> Any:
  return int(key) if isinstance(key, np.integer) else key


def _count(value: Any, name: str) -> None:
  """ValueError naming `name` unless `value` is an integer >= 1."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _closer(
  connections: list[courier_client.Client], reader: ring_lib.Reader | None = None
) -> Callable[[], None]:
  def close() -> None:
    if reader is not None:
      reader.close()
    for connection in connections:
      connection.close()

  return close


def _ring_submitter(
  courier: courier_client.Client, reader: ring_lib.Reader
) -> Callable[..., Future]:
  """A stream's submitter of sample calls that carry its ring's request (ring.py)."""
  sample = courier.futures.stream_sample

  def submit(table: str, num_samples: int, timeout: float | None, stack: bool) -> Future:
    return sample(table, num_samples, timeout, reader.request())

  return submit


def _batch_from_ring(reader: ring_lib.Reader, reply: Mapping[str, Any]) -> ReplaySample:
  """The ReplaySample of a stream_sample reply: read-only views of a slot, or the reply's arrays.

  Those are made read-only too, so that a learner finds its batches the same
  whichever way they came (in the reply when no slot was free)."""
  if "slot" not in reply:
    for array in reply["data"].values():
      array.flags.writeable = False
    return batch_from_reply(reply)
  data, info = reader.arrays(reply["slot"], reply["rows"], reply["layout"], reply["info_layout"])
  return ReplaySample(SampleInfo(**info), structure_lib.unflatten(reply["structure"], data))

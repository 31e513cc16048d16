"""TrajectoryWriter: Reverb's trajectory writer, over a replay Client.

    with client.trajectory_writer(num_keep_alive_refs=3) as writer:
      for t in range(100):
        writer.append({"obs": obs[t], "reward": reward[t]})
        if t >= 2:  # an item per 3-step window: the windows overlap
          writer.create_item("replay", 1.0, {
            "obs": writer.history["obs"][-3:],      # shape (3, ...)
            "reward": writer.history["reward"][-1],  # one step, squeezed
          })
    # leaving the block flushes, then releases the writer's chunks

Steps are dicts column -> array (nested dicts, lists and tuples flatten to
"/"-joined paths, as Client.insert does). `history[column]` covers the last
`num_keep_alive_refs` steps: index 0 is the oldest of them, -1 the latest,
and a slice keeps the step axis. Indexing returns a `TrajectoryColumn`, a
reference to steps, not data; `create_item` turns references into an item
(whose own column names are its trajectory's paths) and queues it.

Episodes: steps belong to the writer's current episode, and `end_episode`
starts the next one (with or without clearing the history); each item
carries the ids of the episodes of the steps it references, so that tables
count episodes as Reverb's do (TableInfo.num_episodes).

Chunking: each column's steps are buffered client-side (copied once, into
the chunk being filled) and sent as one chunk per column when a flush, an
end of episode or a full chunk (`max_chunk_length` steps) sends them, so a
step is stored once on the server whatever the number of items that cover
it: overlapping windows share storage. An item is a list of (chunk_key,
slice) runs per column, so it can span chunk boundaries.

One RPC (`ReplayService.insert_trajectories`) sends the new chunks, the
queued items and the releases; a flush waits until the items are inserted
(rate limiters apply). The call a full chunk makes from `append` is left
in flight while the writer fills the next chunk, so that the server stores
one while the caller fills the other; the next call (a full chunk, a
flush, `end_episode`, `close`) waits for it first and raises its error, as
Reverb's writer raises errors at a later call. One call at most is in
flight. The writer holds one server-side reference per chunk
it sent; it releases a chunk in the first call after no step of the
keep-alive window lives in it (the server drops the reference after that
call's items took theirs), so a chunk lives exactly as long as the window or
an item needs it. `close()` releases all of them. Chunks nothing can refer
to (their steps left the window before any item used them) are never sent.
The server holds them under a lease (server.py) that a writer's process
dying lets expire; the writer keeps its own copy of the chunks it holds, so
after a lease expired (an idle writer) it sends again those the server lost.

Errors leave the writer usable: after a RateLimiterTimeoutError or
TableClosedError the items that were not inserted stay queued for the next
flush; an item the server rejects (ValueError: unknown table, signature
mismatch) is dropped, the items before it are in and those after it stay
queued; after a connection error the
whole call is resent by the next flush (the server ignores what it already
has). Not thread-safe: one writer per thread.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from launchpad import timeouts
from launchpad.replay import selectors
from launchpad.replay import structure as structure_lib
from launchpad.replay.chunk_store import ChunkRef, ColumnSpec, new_key
from launchpad.timeouts import Timeout

if TYPE_CHECKING:
  from launchpad.replay.client import Client

log = logging.getLogger(__name__)


class _Call(NamedTuple):
  """What one insert_trajectories call sent: the heads of the outbox and queue."""

  chunks: list[tuple[int, np.ndarray]]
  items: list[tuple]
  releases: list[int]
  timeout: float | None


_Location = tuple[int, int]
"""Where a step of a column is: (chunk_key, row in that chunk)."""


class TrajectoryColumn:
  """A reference to steps of one column of a writer's history (not the data).

  Made by `writer.history[column][index or slice]`; only useful as a value
  of `create_item`'s trajectory, while its steps are within the writer's
  keep-alive window.
  """

  __slots__ = ("_generation", "_writer", "column", "spec", "squeeze", "steps")

  def __init__(
    self,
    writer: TrajectoryWriter,
    generation: int,
    column: str,
    steps: range,
    squeeze: bool,
    spec: ColumnSpec,
  ):
    self._writer = writer
    self._generation = generation
    self.column = column
    self.steps = steps
    """The referenced steps, counted from the writer's first (or last cleared) step."""
    self.squeeze = squeeze
    """True for a single step selected by an index: the item gets no step axis."""
    self.spec = spec
    """The dtype and shape of one step."""

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape this reference resolves to in an item."""
    return self.spec.shape if self.squeeze else (len(self.steps), *self.spec.shape)

  @property
  def dtype(self) -> np.dtype:
    return self.spec.dtype

  def __len__(self) -> int:
    return len(self.steps)

  def __repr__(self) -> str:
    where = self.steps.start if self.squeeze else f"{self.steps.start}:{self.steps.stop}"
    return f"TrajectoryColumn({self.column!r}[{where}], {self.dtype}{list(self.shape)})"


class _ColumnHistory:
  """`writer.history[column]`: the column's last num_keep_alive_refs steps, indexable."""

  def __init__(self, writer: TrajectoryWriter, column: str):
    self._writer = writer
    self._column = column

  def __len__(self) -> int:
    return len(self._writer._window)

  def __getitem__(self, index: int | slice) -> TrajectoryColumn:
    writer = self._writer
    size = len(writer._window)
    first = writer._num_steps - size  # the absolute step of window index 0
    keep = writer.num_keep_alive_refs
    if isinstance(index, slice):
      if index.step not in (None, 1):
        raise ValueError(f"history[{self._column!r}]: slices must have no step, got {index!r}")
      start = 0 if index.start is None else _bound(index.start, self._column)
      stop = size if index.stop is None else _bound(index.stop, self._column)
      if not (-size <= start <= size and -size <= stop <= size):
        raise IndexError(
          f"history[{self._column!r}][{_format(index)}] reaches beyond the {size} steps kept: "
          f"the writer keeps the last num_keep_alive_refs={keep} steps"
        )
      begin = start + size if start < 0 else start
      end = stop + size if stop < 0 else stop
      if end <= begin:
        raise IndexError(f"history[{self._column!r}][{_format(index)}] selects no steps")
      steps = range(first + begin, first + end)
      squeeze = False
    else:
      position = _bound(index, self._column)
      if not -size <= position < size:
        raise IndexError(
          f"history[{self._column!r}][{position}] is outside the {size} steps kept: the "
          f"writer keeps the last num_keep_alive_refs={keep} steps"
        )
      position %= size
      steps = range(first + position, first + position + 1)
      squeeze = True
    for step in steps:
      if self._column not in writer._window[step - first]:
        raise ValueError(f"column {self._column!r} has no data at step {step}")
    return TrajectoryColumn(
      writer, writer._generation, self._column, steps, squeeze, writer._specs[self._column]
    )

  def __repr__(self) -> str:
    return f"<history of column {self._column!r}: {len(self)} steps>"


class _History(Mapping[str, _ColumnHistory]):
  """`writer.history`: column -> its history of the kept steps."""

  def __init__(self, writer: TrajectoryWriter):
    self._writer = writer

  def __getitem__(self, column: str) -> _ColumnHistory:
    if column not in self._writer._specs:
      raise KeyError(
        f"the writer has no column {column!r}; columns: "
        f"{', '.join(map(repr, self._writer._specs)) or 'none yet'}"
      )
    return _ColumnHistory(self._writer, column)

  def __iter__(self):
    return iter(self._writer._specs)

  def __len__(self) -> int:
    return len(self._writer._specs)


def _flat(data: Any, leaf: type) -> bool:
  """Whether `data` is already a non-empty flat dict str -> `leaf` (what flatten would give)."""
  return (
    type(data) is dict
    and bool(data)
    and all(type(k) is str and type(v) is leaf for k, v in data.items())
  )


def _bound(value: Any, column: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise TypeError(f"history[{column!r}]: expected an int or a slice, got {value!r}")
  return int(value)


def _format(index: slice) -> str:
  return f"{'' if index.start is None else index.start}:{'' if index.stop is None else index.stop}"


class _Buffer:
  """One column's chunk being filled: the steps not yet sent, copied in as they come."""

  __slots__ = ("array", "key", "length")

  def __init__(self, spec: ColumnSpec, capacity: int):
    self.key = new_key()
    self.array = np.empty((capacity, *spec.shape), spec.dtype)
    self.length = 0

  def add(self, value: np.ndarray, limit: int) -> int:
    if self.length == len(self.array):
      grown = np.empty((min(2 * self.length, limit), *self.array.shape[1:]), self.array.dtype)
      grown[: self.length] = self.array
      self.array = grown
    self.array[self.length] = value
    self.length += 1
    return self.length - 1


class TrajectoryWriter:
  """Writes steps and items built from them (see the module docstring); a context manager.

  Args:
    client: the replay Client to send through.
    num_keep_alive_refs: how many of the latest steps `history` (and so
      items) may reference; the writer keeps their chunks alive.
    timeout: default timeout of flushes (None: the client's default).
    max_chunk_length: the most steps of a column buffered before they are
      sent (with the queued items); bounds the writer's memory.
  """

  def __init__(
    self,
    client: Client,
    num_keep_alive_refs: int,
    timeout: Timeout = None,
    max_chunk_length: int = 256,
  ):
    for name, value in (
      ("num_keep_alive_refs", num_keep_alive_refs),
      ("max_chunk_length", max_chunk_length),
    ):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    self._client = client
    self.num_keep_alive_refs = num_keep_alive_refs
    self.max_chunk_length = max_chunk_length
    self._timeout = timeouts.validate(timeout)
    self._id = new_key()  # the server tracks the chunks this writer holds under it
    self._specs: dict[str, ColumnSpec] = {}
    self._window: collections.deque[dict[str, _Location]] = collections.deque(
      maxlen=num_keep_alive_refs
    )
    self._num_steps = 0  # steps appended since the history was last cleared
    self._generation = 0  # bumped when the history is cleared: older references are stale
    self._buffers: dict[str, _Buffer] = {}
    self._outbox: list[tuple[int, np.ndarray]] = []  # chunks sealed, not known to be stored
    # Items created, not yet inserted: key, table, priority, refs, structure, episodes.
    self._queue: list[tuple[int, str, float, dict[str, list[ChunkRef]], Any, tuple[int, ...]]] = []
    # The current episode's id, as the one tuple its items share (pickled once per
    # call); end_episode draws the next.
    self._episode = (new_key(),)
    # The episode of each step of the window, in step with it.
    self._window_episodes: collections.deque[int] = collections.deque(maxlen=num_keep_alive_refs)
    # Chunks stored on the server that this writer references, kept to send
    # again should the writer's lease on them expire (see _send).
    self._held: dict[int, np.ndarray] = {}
    # The call a full chunk started and nothing has waited for yet: its
    # future and what it sent (see _send).
    self._in_flight: tuple[Future, _Call] | None = None
    self._closed = False
    self.history: Mapping[str, _ColumnHistory] = _History(self)
    """column -> its last num_keep_alive_refs steps: `history["obs"][-3:]`."""

  # Writing.

  def append(self, step: Any) -> None:
    """Appends a step: column -> array or scalar (nested structures are flattened).

    A step may omit columns (their history has no data there); a column's
    dtype and shape must stay the same. When a column's buffer reaches
    max_chunk_length steps, the buffers and queued items are sent, without
    waiting (see the module docstring); this waits for the call the chunk
    before made, so it may block on a rate limiter and raise that call's
    error: the step was appended then, and the unsent items stay queued.
    """
    self._check_open()
    if _flat(step, np.ndarray) and not any(v.dtype.hasobject for v in step.values()):
      columns = step  # flat already (the common case): skip the walk
    else:
      columns, _ = structure_lib.flatten(step)
    for column, array in columns.items():
      spec = self._specs.get(column)
      if spec is not None and (array.dtype != spec.dtype or array.shape != spec.shape):
        raise ValueError(
          f"column {column!r}: expected dtype {spec.dtype} and shape {spec.shape} as in earlier "
          f"steps, got {array.dtype} and {array.shape}"
        )
    locations: dict[str, _Location] = {}
    full = False
    for column, array in columns.items():
      spec = self._specs.get(column)
      if spec is None:
        spec = self._specs[column] = ColumnSpec(array.dtype, array.shape)
      buffer = self._buffers.get(column)
      if buffer is None:
        # Room for a whole chunk at once: growing by doubling copied each step
        # ~1.5 times more and touched fresh pages for every copy (see
        # docs/design.md); pages never written are never faulted in.
        buffer = self._buffers[column] = _Buffer(spec, self.max_chunk_length)
      locations[column] = (buffer.key, buffer.add(array, self.max_chunk_length))
      full |= buffer.length >= self.max_chunk_length
    self._window.append(locations)
    self._window_episodes.append(self._episode[0])
    self._num_steps += 1
    if full:
      self._send(self._timeout, wait=False)

  def create_item(self, table: str, priority: float, trajectory: Any) -> None:
    """Queues an item for `table`; it is sent with the next chunks (or flush).

    Args:
      table: the table's name.
      priority: finite and >= 0.
      trajectory: item column -> a `history` reference, or a nesting of
        dicts, lists and tuples of them (flattened to "/"-joined columns).

    Raises:
      ValueError: a bad priority, or a reference that is not a history
        reference of this writer or whose steps left the keep-alive window.
    """
    self._check_open()
    if not isinstance(table, str):
      raise ValueError(f"table must be a table name, got {table!r}")
    priority = selectors.check_priority(priority)
    if _flat(trajectory, TrajectoryColumn):
      columns = trajectory  # flat already (the common case): skip the walk
      structure = structure_lib.flat_dict_structure(tuple(trajectory))
    else:
      columns, structure = structure_lib.flatten(trajectory, self._check_reference)
    refs = {column: self._refs(column, ref) for column, ref in columns.items()}
    episodes = self._episodes_of(columns.values())
    self._queue.append((new_key(), table, priority, refs, structure, episodes))

  def flush(self, timeout: Timeout = None) -> None:
    """Sends the buffered steps and queued items in one RPC; waits until they are inserted.

    Raises:
      RateLimiterTimeoutError: a table's limiter did not allow an insert in
        time; the items not inserted stay queued for the next flush.
      TableClosedError: the server is stopping.
      ValueError: the server rejected an item: it is dropped, the items
        before it were inserted, those after it stay queued.
    """
    self._check_open()
    self._send(self._timeout if timeout is None else timeouts.validate(timeout))

  def end_episode(self, clear_buffers: bool = True, timeout: Timeout = None) -> None:
    """Ends the episode (the next step begins a new one) and flushes; with
    `clear_buffers`, empties the history first (references to it go stale).

    Keep the history (clear_buffers=False) only for items that span episodes.
    Clearing it lets the flush release every chunk once the items are in.
    """
    self._check_open()
    if clear_buffers:
      self._window.clear()
      self._window_episodes.clear()
      self._num_steps = 0
      self._generation += 1
    self._episode = (new_key(),)
    self.flush(timeout)

  def close(self) -> None:
    """Drops unsent steps and items and releases the writer's chunks on the server. Idempotent."""
    if self._closed:
      return
    self._closed = True
    try:
      self._finish_in_flight()
    except Exception as e:  # noqa: BLE001 - what it sent is released below all the same
      log.warning("trajectory writer: its last chunk's call failed as it closed: %r", e)
    releases = sorted(self._held.keys() | {key for key, _ in self._outbox})
    self._queue.clear()
    self._outbox.clear()
    self._buffers.clear()
    self._window.clear()
    self._window_episodes.clear()
    if releases:
      try:
        self._client.insert_trajectories(self._id, [], [], releases, self._timeout)
        self._held.clear()
      except Exception as e:  # noqa: BLE001 - closing must not fail because the server went away
        log.warning("trajectory writer: could not release %d chunks: %r", len(releases), e)

  def __enter__(self) -> TrajectoryWriter:
    return self

  def __exit__(self, exc_type: Any, *exc: Any) -> None:
    """Flushes (unless an exception is propagating), then closes."""
    try:
      if exc_type is None and not self._closed:
        self.flush()
    finally:
      self.close()

  @property
  def num_queued_items(self) -> int:
    """Items created and not yet inserted."""
    return len(self._queue)

  def __repr__(self) -> str:
    return (
      f"<TrajectoryWriter num_keep_alive_refs={self.num_keep_alive_refs}, "
      f"{len(self._queue)} items queued, {len(self._held)} chunks held>"
    )

  # Internals.

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("the trajectory writer is closed")

  def _check_reference(self, value: Any, path: str) -> TrajectoryColumn:
    if not isinstance(value, TrajectoryColumn) or value._writer is not self:
      raise ValueError(
        f"trajectory column {path!r}: expected a reference from this writer's history "
        f"(writer.history[column][...]), got {value!r}"
      )
    return value

  def _refs(self, column: str, ref: TrajectoryColumn) -> list[ChunkRef]:
    """The (chunk_key, slice) runs of a reference; checks it is still in the window."""
    self._check_reference(ref, column)
    first = self._num_steps - len(self._window)
    if ref._generation != self._generation or ref.steps.start < first:
      raise ValueError(
        f"trajectory column {column!r}: {ref!r} refers to steps that are no longer kept (the "
        f"writer keeps the last num_keep_alive_refs={self.num_keep_alive_refs} steps, and "
        "end_episode clears them)"
      )
    locations = [self._window[step - first][ref.column] for step in ref.steps]
    if ref.squeeze:
      return [locations[0]]
    runs: list[ChunkRef] = []
    start_key, start_row = locations[0]
    last_row = start_row
    for key, row in locations[1:]:
      if key == start_key and row == last_row + 1:
        last_row = row
        continue
      runs.append((start_key, slice(start_row, last_row + 1)))
      start_key, start_row, last_row = key, row, row
    runs.append((start_key, slice(start_row, last_row + 1)))
    return runs

  def _episodes_of(self, references: Iterable[TrajectoryColumn]) -> tuple[int, ...]:
    """The ids of the episodes of the steps `references` (checked, in the window) cover."""
    episodes = self._window_episodes
    if episodes[0] == self._episode[0]:  # the common case: every kept step is of this episode
      return self._episode
    first = self._num_steps - len(episodes)
    return tuple(dict.fromkeys(episodes[s - first] for ref in references for s in ref.steps))

  def _send(self, timeout: float | None, wait: bool = True) -> None:
    """One insert_trajectories call: sealed chunks, queued items, releases.

    With `wait` False (a chunk just filled), the call is left in flight
    while the caller goes on filling the next chunk: the server stores one
    while the writer fills the other. Whatever sends next waits for it
    first, and its errors are raised there (as Reverb's writer raises them
    at a later call or flush); only one call is ever in flight.
    """
    live = self._live()
    wanted = self._wanted()
    for buffer in self._buffers.values():
      if buffer.key in live or buffer.key in wanted:  # else nothing can ever refer to it
        self._outbox.append((buffer.key, buffer.array[: buffer.length]))
    self._buffers.clear()
    self._finish_in_flight()  # if it raises, the chunks just sealed go with the next call
    releases = sorted((self._held.keys() | {key for key, _ in self._outbox}) - live)
    if not self._outbox and not self._queue and not releases:
      return
    call = _Call(list(self._outbox), list(self._queue), releases, timeout)
    if wait:
      self._finish(self._insert(call), call)
    else:
      self._in_flight = (self._insert(call, wait=False), call)

  def _insert(self, call: _Call, wait: bool = True) -> Any:
    return self._client.insert_trajectories(
      self._id, call.chunks, call.items, call.releases, call.timeout, list(self._held), wait
    )

  def _finish_in_flight(self) -> None:
    """Waits for the call in flight, if any, and takes in its reply."""
    if self._in_flight is None:
      return
    future, call = self._in_flight
    self._in_flight = None
    self._finish(future.result(), call)  # a failed call leaves all it sent to be sent again

  def _finish(self, reply: dict[str, Any], call: _Call) -> None:
    """Takes in the reply of `call`; the outbox and queue begin with what it sent.

    If the server lost chunks this writer held (its lease expired while the
    writer made no call and no item kept them), it says which, and they go
    again in a second call, with everything that waits to be sent.
    """
    while reply["missing"]:
      live, wanted = self._live(), self._wanted()
      for key in reply["missing"]:
        array = self._held.pop(key)
        if key in live or key in wanted:
          self._outbox.append((key, array))
      call = _Call(list(self._outbox), list(self._queue), call.releases, call.timeout)
      reply = self._insert(call)
    self._held.update(call.chunks)  # stored, whatever happened to the items
    del self._outbox[: len(call.chunks)]
    del self._queue[: reply["inserted"]]
    if reply["rejected"] is not None:
      del self._queue[0]  # the server rejected it: it can never go in
    if reply["error"] is not None:  # the items not inserted stay queued
      raise reply["error"]
    for key in call.releases:
      self._held.pop(key, None)

  def _live(self) -> set[int]:
    """The chunks of the steps in the keep-alive window."""
    return {key for step in self._window for key, _ in step.values()}

  def _wanted(self) -> set[int]:
    """The chunks the queued items refer to."""
    return {key for _, _, _, refs, *_ in self._queue for runs in refs.values() for key, _ in runs}

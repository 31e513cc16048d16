"""Items: what a table holds for each item, and what sampling one gives back.

An `Item` is a table's record of one item: key, priority, times sampled, the
sequence numbers that order it (insertion, last update), its structure, the
episodes its steps came from, and its data as references into chunks of the
table's ChunkStore, whose arrays it holds (one store reference per chunk).
`resolve()` gives its arrays, outside any lock: chunks are immutable. A
`SampledItem` is what `Table.sample` returns for one draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from launchpad.replay import chunk_store as chunk_store_lib
from launchpad.replay.chunk_store import ChunkRef, check_key


def check_episodes(episodes: Any) -> tuple[int, ...]:
  """An item's episode ids, checked: a non-empty sequence of uint64 ids, kept once each.

  Raises:
    ValueError: anything else.
  """
  if type(episodes) is tuple and len(episodes) == 1:  # a writer's item of one episode
    return (check_key(episodes[0], "episode id"),)
  if isinstance(episodes, str | bytes) or not isinstance(episodes, Sequence) or not episodes:
    raise ValueError(f"episodes must be a non-empty sequence of episode ids, got {episodes!r}")
  return tuple(dict.fromkeys(check_key(episode, "episode id") for episode in episodes))


class SampledItem(NamedTuple):
  """One sampled item, as `Table.sample` returns it (unpacks as a tuple too)."""

  key: int
  data: dict[str, np.ndarray]
  """column -> array; read-only views of the chunks where no copy was needed."""
  probability: float
  """The probability the sampler had of choosing this item."""
  table_size: int
  """The number of items in the table when it was sampled."""
  priority: float
  times_sampled: int
  """Including this sample."""
  structure: Any = None
  """How `data`'s columns nest (structure.unflatten); None: a flat dict."""


class Item:
  """An item of a table. Its data is `refs` into `chunks`, in one of two forms:

  row < 0   refs is column -> canonical [(chunk_key, slice or index), ...]
  row >= 0  refs is column -> chunk_key, and the item is that row of each
            chunk: the compact form of insert_many, whose items share one
            refs dict and one chunks dict (no objects of their own for data)
  """

  __slots__ = (
    "chunks",
    "episodes",
    "inserted_seq",
    "key",
    "priority",
    "refs",
    "row",
    "structure",
    "times_sampled",
    "updated_seq",
  )

  def __init__(
    self,
    key,
    priority,
    times_sampled,
    refs,
    chunks,
    inserted_seq,
    updated_seq,
    structure,
    row=-1,
    episodes=None,
  ):
    self.key: int = key
    self.priority: float = priority
    self.times_sampled: int = times_sampled
    self.refs: Mapping[str, Any] = refs
    self.chunks: dict[int, np.ndarray] = chunks  # one reference held in the store for each
    self.inserted_seq: int = inserted_seq
    self.updated_seq: int = updated_seq
    self.structure: Any = structure
    self.row: int = row
    # The ids of the episodes its steps came from (a trajectory writer's);
    # None: the item is an episode of its own (Client.insert, as in Reverb).
    self.episodes: tuple[int, ...] | None = episodes

  def data_refs(self) -> dict[str, tuple[ChunkRef, ...]]:
    """The item's canonical data references, whichever form it is stored in."""
    if self.row < 0:
      return dict(self.refs)
    return {column: ((chunk, self.row),) for column, chunk in self.refs.items()}

  def resolve(self) -> dict[str, np.ndarray]:
    """The item's arrays (read-only views of its chunks where no copy is needed)."""
    if self.row < 0:
      return chunk_store_lib.resolve(self.refs, self.chunks)
    row, chunks = self.row, self.chunks
    return {column: chunks[chunk][row, ...] for column, chunk in self.refs.items()}

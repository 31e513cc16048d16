"""TableInfo: what a table reports about itself, under Reverb's names (`reverb.TableInfo`).

`Table.info()` returns one, and `Client.server_info()` a dict table name ->
TableInfo, as Reverb's `Client.server_info()` does, so code written for
Reverb reads `info["experience"].current_size`. Its attributes are all of
Reverb's (name, sampler_options, remover_options, max_size,
max_times_sampled, rate_limiter_info, signature, current_size, num_episodes,
num_deleted_episodes, num_unique_samples, table_worker_time), and this
table's own: whether it is closed, and lifetime counts of what happened to
its items. Episodes are counted as Reverb counts them: a trajectory writer's
steps belong to its current episode (end_episode starts the next), an item
to the episodes of the steps it references, and each item `Client.insert`
makes is an episode of its own. One of Reverb's fields reports nothing, and
says so by being zero: table_worker_time, since a table here has no worker
thread (calls run in the callers' threads, under the table's lock); how long
calls waited for the rate limiter is in rate_limiter_info's insert_stats and
sample_stats.

The options and the limiter's state are dicts that are also read by
attribute, as Reverb's protos are: `info.rate_limiter_info.min_size_to_sample`,
`.samples_per_insert`, `.min_diff`, `.max_diff`, `.insert_stats.completed`;
`info.sampler_options.prioritized.priority_exponent`, `.fifo`, `.uniform`,
`.lifo`, `.heap.min_heap`, `.is_deterministic`.

A TableInfo is also a read-only mapping whose keys are those of the dict
`server_info()` returned before (`info["size"]`, `info["sampler"]`,
`info["rate_limiter"]`, `info["num_inserts"]`, ...), so code written for
that keeps working: `dict(info)` is that dict. Its attribute names work as
keys too (`info["current_size"]`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

# The mapping's keys (the dict server_info() returned before) -> attribute names.
_KEYS = {
  "name": "name",
  "size": "current_size",
  "max_size": "max_size",
  "max_times_sampled": "max_times_sampled",
  "closed": "closed",
  "sampler": "sampler_options",
  "remover": "remover_options",
  "signature": "signature",
  "num_inserts": "num_inserts",
  "num_updates": "num_updates",
  "num_samples": "num_samples",
  "num_deletes": "num_deletes",
  "num_evictions": "num_evictions",
  "num_expired": "num_expired",
  "num_resets": "num_resets",
  "num_unique_samples": "num_unique_samples",
  "rate_limiter": "rate_limiter_info",
}


class Fields(dict[str, Any]):
  """A dict whose keys read as attributes too, as Reverb's protos are read; nested dicts too."""

  __slots__ = ()

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    for key, value in self.items():
      if type(value) is dict:
        self[key] = Fields(value)

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(
        f"{type(self).__name__} has no {name!r}: its fields are {', '.join(self)}"
      ) from None


# Selectors whose choice depends only on the items (Reverb's is_deterministic).
_DETERMINISTIC = ("Fifo", "Lifo", "MinHeap", "MaxHeap")


class SelectorOptions(Fields):
  """A selector's options, {"type": "Prioritized", "priority_exponent": 0.8}, also read
  under the names of Reverb's KeyDistributionOptions: `fifo`, `uniform`, `lifo`
  (whether it is that selector), `prioritized.priority_exponent`, `heap.min_heap`
  (False and 0.0 for other selectors, as an unset proto field reads), `is_deterministic`."""

  __slots__ = ()

  @property
  def fifo(self) -> bool:
    return self["type"] == "Fifo"

  @property
  def lifo(self) -> bool:
    return self["type"] == "Lifo"

  @property
  def uniform(self) -> bool:
    return self["type"] == "Uniform"

  @property
  def prioritized(self) -> Fields:
    return Fields(priority_exponent=float(self.get("priority_exponent", 0.0)))

  @property
  def heap(self) -> Fields:
    return Fields(min_heap=self["type"] == "MinHeap")

  @property
  def is_deterministic(self) -> bool:
    return self["type"] in _DETERMINISTIC


def no_worker_time() -> Fields:
  """Reverb's TableWorkerTime, all zero: a table here has no worker thread."""
  names = ("running_ms", "sampling_ms", "inserting_ms", "sleeping_ms")
  waits = ("waiting_for_sampling_ms", "waiting_for_inserts_ms")
  return Fields(dict.fromkeys(names + waits, 0))


@dataclasses.dataclass(frozen=True)
class TableInfo(Mapping[str, Any]):
  """A table's configuration and state at one instant (see the module docstring)."""

  name: str
  sampler_options: SelectorOptions
  """The sampler's configuration: {"type": "Prioritized", "priority_exponent": 0.8}, ...;
  a dict given is read into a SelectorOptions."""
  remover_options: SelectorOptions
  max_size: int
  max_times_sampled: int
  """Items are removed once sampled this many times; < 1: never."""
  rate_limiter_info: Fields
  """The limiter's configuration (type, samples_per_insert, min_size_to_sample, min_diff,
  max_diff), counters (inserts, samples, deletes, diff; reset() zeroes them) and, in
  insert_stats and sample_stats, how it treated calls: completed, limited (had to wait),
  pending (waiting now), timeouts, cancelled (by close), wait_seconds. A dict given is
  read into Fields."""
  signature: dict[str, tuple[Any, list]] | None
  """column -> (dtype, shape) every item must match, or None."""
  current_size: int
  """Items in the table now."""
  num_episodes: int
  """Episodes that items in the table now come from (see the module docstring)."""
  num_deleted_episodes: int
  """Episodes whose last item left the table since the last reset (reset() zeroes it
  and num_episodes, as in Reverb)."""
  num_unique_samples: int
  """Items sampled at least once since the last reset (reset() zeroes it, as in Reverb)."""
  closed: bool
  num_inserts: int
  """Items inserted over the table's life (reset() does not zero it, nor those below)."""
  num_updates: int
  """Priority updates (mutate_priorities, and inserts of a key already present)."""
  num_samples: int
  num_deletes: int
  """Items deleted by mutate_priorities."""
  num_evictions: int
  """Items the remover evicted to keep the table within max_size."""
  num_expired: int
  """Items removed for having been sampled max_times_sampled times."""
  num_resets: int
  table_worker_time: Fields = dataclasses.field(default_factory=no_worker_time)
  """Reverb's TableWorkerTime (running_ms, sampling_ms, ...); all 0: no worker thread here."""

  def __post_init__(self) -> None:
    for name in ("sampler_options", "remover_options"):
      object.__setattr__(self, name, SelectorOptions(getattr(self, name)))
    object.__setattr__(self, "rate_limiter_info", Fields(self.rate_limiter_info))

  def __getitem__(self, key: str) -> Any:
    attribute = _KEYS.get(key, key)
    if attribute not in _ATTRIBUTES:
      raise KeyError(
        f"TableInfo has no {key!r}: its keys are {', '.join(_KEYS)}; its attributes "
        f"(keys too) {', '.join(_ATTRIBUTES)}"
      )
    return getattr(self, attribute)

  def __iter__(self) -> Iterator[str]:
    return iter(_KEYS)

  def __len__(self) -> int:
    return len(_KEYS)


_ATTRIBUTES = tuple(field.name for field in dataclasses.fields(TableInfo))

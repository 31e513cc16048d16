"""TableInfo: what a table reports about itself, under Reverb's names (`reverb.TableInfo`).

`Table.info()` returns one, and `Client.server_info()` a dict table name ->
TableInfo, as Reverb's `Client.server_info()` does, so code written for
Reverb reads `info["experience"].current_size`. The attributes are Reverb's
where they apply here (name, sampler_options, remover_options, max_size,
max_times_sampled, rate_limiter_info, signature, current_size,
num_unique_samples); Reverb's num_episodes, num_deleted_episodes and
table_worker_time do not (items here do not record episodes, and a table
has no worker thread). The rest are this table's own: whether it is closed,
and lifetime counts of what happened to its items.

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


@dataclasses.dataclass(frozen=True)
class TableInfo(Mapping[str, Any]):
  """A table's configuration and state at one instant (see the module docstring)."""

  name: str
  sampler_options: dict[str, Any]
  """The sampler's configuration: {"type": "Prioritized", "priority_exponent": 0.8}, ..."""
  remover_options: dict[str, Any]
  max_size: int
  max_times_sampled: int
  """Items are removed once sampled this many times; < 1: never."""
  rate_limiter_info: dict[str, Any]
  """The limiter's configuration and counters (inserts, samples, deletes, diff; reset()
  zeroes them) and, in insert_stats and sample_stats, how it treated calls: completed,
  limited (had to wait), pending (waiting now), timeouts, cancelled (by close), wait_seconds."""
  signature: dict[str, tuple[Any, list]] | None
  """column -> (dtype, shape) every item must match, or None."""
  current_size: int
  """Items in the table now."""
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

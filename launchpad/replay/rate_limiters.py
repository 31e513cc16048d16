"""Rate limiters: whether a table's next insert or sample may proceed now.

Reverb's model and names (`reverb.rate_limiters`). A limiter counts the
table's inserts, samples and deletes and tracks

    diff = inserts * samples_per_insert - samples

An insert may proceed while the table holds fewer than `min_size_to_sample`
items afterwards, or while `diff` stays <= `max_diff` after it; a sample may
proceed while the table holds at least `min_size_to_sample` items and `diff`
stays >= `min_diff` after it. The table waits (on a condition, with a
timeout) for the answer to become yes; the limiter itself only counts and
answers, under the table's lock, so it holds no lock of its own.

  MinSize(n)                         samples wait for n items; inserts never wait
  SampleToInsertRatio(spi, n, eb)    keeps samples/inserts near spi, within eb
  Queue(size) / Stack(size)          for Table.queue / Table.stack
  RateLimiter(spi, n, min, max)      the general form all of them are
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_MAX = sys.float_info.max  # "no bound", as Reverb writes it (finite, so it survives any encoding)


def _real(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, int | float):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  result = float(value)
  if math.isnan(result):
    raise ValueError(f"{name} must not be NaN")
  return result


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} ({value!r}) must be a positive integer")
  return int(value)


class RateLimiter:
  """The general rate limiter; the named ones below only choose its four numbers.

  Args:
    samples_per_insert: how much one insert raises `diff` (> 0).
    min_size_to_sample: samples wait until the table holds this many items (>= 1).
    min_diff: samples wait while they would take `diff` below this.
    max_diff: inserts wait while they would take `diff` above this (once the
      table holds `min_size_to_sample` items).

  A limiter belongs to one table: the table registers itself at construction.
  The counters (inserts, samples, deletes) are part of the table's snapshot.
  """

  def __init__(
    self, samples_per_insert: float, min_size_to_sample: int, min_diff: float, max_diff: float
  ):
    spi = _real("samples_per_insert", samples_per_insert)
    if not math.isfinite(spi) or spi <= 0:
      raise ValueError(f"samples_per_insert must be finite and > 0, got {samples_per_insert!r}")
    self._samples_per_insert = spi
    self._min_size_to_sample = _positive_int("min_size_to_sample", min_size_to_sample)
    self._min_diff = _real("min_diff", min_diff)
    self._max_diff = _real("max_diff", max_diff)
    if self._min_diff > self._max_diff:
      raise ValueError(f"min_diff ({min_diff}) must be <= max_diff ({max_diff})")
    self._inserts = 0
    self._samples = 0
    self._deletes = 0
    self._table: str | None = None
    self._kind = type(self).__name__  # kept through snapshots, for info

  # Configuration and counters.

  @property
  def samples_per_insert(self) -> float:
    return self._samples_per_insert

  @property
  def min_size_to_sample(self) -> int:
    return self._min_size_to_sample

  @property
  def min_diff(self) -> float:
    return self._min_diff

  @property
  def max_diff(self) -> float:
    return self._max_diff

  @property
  def inserts(self) -> int:
    return self._inserts

  @property
  def samples(self) -> int:
    return self._samples

  @property
  def deletes(self) -> int:
    return self._deletes

  @property
  def diff(self) -> float:
    """inserts * samples_per_insert - samples: the quantity kept in [min_diff, max_diff]."""
    return self._inserts * self._samples_per_insert - self._samples

  # Decisions (the table calls these under its lock).

  def can_insert(self, num_inserts: int = 1) -> bool:
    """Whether `num_inserts` more inserts may proceed now."""
    return self._allows_inserts(self._inserts, self._deletes, num_inserts)

  def inserts_allowed(self, limit: int, size: int, max_size: int) -> int:
    """The most inserts, up to `limit`, that may proceed now one after another.

    As `limit` calls of `can_insert()` and `record_insert()` would decide,
    each insert into a table of `size` items past `max_size` evicting one
    (a delete): for a table inserting a batch under one lock hold.
    """
    if limit < 1:
      return 0
    if (self._inserts + limit) * self._samples_per_insert - self._samples <= self._max_diff:
      return limit  # the bound on diff holds for all of them (it only grows with inserts)
    inserts, deletes = self._inserts, self._deletes
    count = 0
    while count < limit and self._allows_inserts(inserts, deletes, 1):
      count += 1
      inserts += 1
      if size < max_size:
        size += 1
      else:
        deletes += 1
    return count

  def _allows_inserts(self, inserts: int, deletes: int, num_inserts: int) -> bool:
    if inserts + num_inserts - deletes <= self._min_size_to_sample:
      return True  # until the table reaches min_size_to_sample, inserts are free
    return (inserts + num_inserts) * self._samples_per_insert - self._samples <= self._max_diff

  def can_sample(self, num_samples: int = 1) -> bool:
    """Whether `num_samples` more samples may proceed now."""
    if self._inserts - self._deletes < self._min_size_to_sample:
      return False
    return self.diff - num_samples >= self._min_diff

  def samples_allowed(self, limit: int) -> int:
    """The most samples, up to `limit`, that may proceed now without waiting."""
    if limit < 1 or not self.can_sample(1):
      return 0
    slack = self.diff - self._min_diff
    count = min(limit, max(1, math.floor(slack)) if math.isfinite(slack) else limit)
    while count > 1 and not self.can_sample(count):
      count -= 1
    return count

  # Counting (the table calls these after the operation happened).

  def record_insert(self, count: int = 1) -> None:
    self._inserts += count

  def record_sample(self, count: int = 1) -> None:
    self._samples += count

  def record_delete(self, count: int = 1) -> None:
    self._deletes += count

  def undo_sample(self, count: int = 1) -> None:
    """Takes back `count` recorded samples (a table undoing a failed call's samples)."""
    self._samples -= count

  def undo_delete(self, count: int = 1) -> None:
    """Takes back `count` recorded deletes (the items came back into the table)."""
    self._deletes -= count

  def reset(self) -> None:
    """Forgets every insert, sample and delete (`Table.reset`)."""
    self._inserts = self._samples = self._deletes = 0

  # Introspection and checkpoints.

  def describe(self) -> str:
    """A one-line account of the state, for error messages."""
    return (
      f"inserts={self._inserts}, samples={self._samples}, deletes={self._deletes}, "
      f"size={self._inserts - self._deletes}, diff={self.diff:g}, "
      f"min_size_to_sample={self._min_size_to_sample}, "
      f"min_diff={self._min_diff:g}, max_diff={self._max_diff:g}"
    )

  def info(self) -> dict[str, Any]:
    """Configuration and counters."""
    return {
      "type": self._kind,
      "samples_per_insert": self._samples_per_insert,
      "min_size_to_sample": self._min_size_to_sample,
      "min_diff": self._min_diff,
      "max_diff": self._max_diff,
      "inserts": self._inserts,
      "samples": self._samples,
      "deletes": self._deletes,
      "diff": self.diff,
    }

  def snapshot(self) -> dict[str, Any]:
    """Everything `from_snapshot` needs to rebuild this limiter, counters included."""
    state = self.info()
    del state["diff"]
    return state

  def restore_counters(self, snapshot: Mapping[str, Any]) -> None:
    """Sets the counters from `snapshot()` (the configuration stays this limiter's)."""
    counters = {}
    for name in ("inserts", "samples", "deletes"):
      value = snapshot[name]
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"rate limiter snapshot: {name} must be an integer >= 0, got {value!r}")
      counters[name] = int(value)
    self._inserts, self._samples, self._deletes = (
      counters["inserts"],
      counters["samples"],
      counters["deletes"],
    )

  @classmethod
  def from_snapshot(cls, snapshot: Mapping[str, Any]) -> RateLimiter:
    """A limiter with the snapshot's configuration and counters.

    Always of the general class (the four numbers are the whole behaviour),
    but reporting the snapshot's type name in `info()`.
    """
    limiter = RateLimiter(
      samples_per_insert=snapshot["samples_per_insert"],
      min_size_to_sample=snapshot["min_size_to_sample"],
      min_diff=snapshot["min_diff"],
      max_diff=snapshot["max_diff"],
    )
    limiter.restore_counters(snapshot)
    kind = snapshot.get("type", "RateLimiter")
    limiter._kind = kind if isinstance(kind, str) else "RateLimiter"
    return limiter

  def register(self, table: str) -> None:
    """Makes this limiter `table`'s; ValueError if it already belongs to a table (Table calls it)."""
    if self._table is not None:
      raise ValueError(
        f"this rate limiter already belongs to table {self._table!r}; "
        f"give table {table!r} its own limiter"
      )
    self._table = table

  def __repr__(self) -> str:
    return (
      f"{self._kind}(samples_per_insert={self._samples_per_insert:g}, "
      f"min_size_to_sample={self._min_size_to_sample}, min_diff={self._min_diff:g}, "
      f"max_diff={self._max_diff:g})"
    )


class MinSize(RateLimiter):
  """Samples wait until the table holds `min_size_to_sample` items; nothing else is limited."""

  def __init__(self, min_size_to_sample: int):
    super().__init__(
      samples_per_insert=1.0,
      min_size_to_sample=_positive_int("min_size_to_sample", min_size_to_sample),
      min_diff=-_MAX,
      max_diff=_MAX,
    )


class SampleToInsertRatio(RateLimiter):
  """Keeps the number of samples near `samples_per_insert` times the number of inserts.

  Until the table holds `min_size_to_sample` items it behaves as MinSize.
  Afterwards inserts wait while `diff` would exceed the top of the error
  buffer and samples wait while it would fall below its bottom, so
  `samples - samples_per_insert * (inserts - min_size_to_sample)` stays
  within `error_buffer` of zero.

  Args:
    samples_per_insert: how many times, on average, each item is sampled.
    min_size_to_sample: items needed before sampling starts (>= 1).
    error_buffer: a number e: `diff` is kept within
      `samples_per_insert * min_size_to_sample ± e` (the offset discounts the
      inserts made before sampling could start); or a pair (min_diff,
      max_diff) used as given.

  Raises:
    ValueError: for a configuration that can deadlock (see below).
  """

  def __init__(
    self,
    samples_per_insert: float,
    min_size_to_sample: int,
    error_buffer: float | tuple[float, float],
  ):
    spi = _real("samples_per_insert", samples_per_insert)
    if not math.isfinite(spi) or spi <= 0:
      raise ValueError(f"samples_per_insert must be finite and > 0, got {samples_per_insert!r}")
    min_size = _positive_int("min_size_to_sample", min_size_to_sample)
    offset = spi * min_size
    if isinstance(error_buffer, tuple | list):
      if len(error_buffer) != 2:
        raise ValueError(
          f"error_buffer must be a number or a (min, max) pair, got {error_buffer!r}"
        )
      min_diff = _real("error_buffer[0]", error_buffer[0])
      max_diff = _real("error_buffer[1]", error_buffer[1])
    else:
      buffer = _real("error_buffer", error_buffer)
      min_diff, max_diff = offset - buffer, offset + buffer

    # Reverb's rule (reverb/rate_limiters.py, SampleToInsertRatio): the window
    # max_diff - min_diff must be at least 2 * max(1, samples_per_insert) wide,
    # i.e. a single error_buffer must be >= max(1, samples_per_insert). The
    # reason: one insert moves `diff` up by samples_per_insert and one sample
    # moves it down by 1; in a narrower window `diff` can sit where the next
    # insert would overshoot max_diff and the next sample undershoot min_diff,
    # and then both wait forever. (Width >= samples_per_insert + 1 is the bare
    # minimum; Reverb asks for twice the larger step, and so do we.)
    required = 2 * max(1.0, spi)
    if not max_diff - min_diff >= required:
      raise ValueError(
        f"SampleToInsertRatio: the error buffer spans [{min_diff:g}, {max_diff:g}], "
        f"{max_diff - min_diff:g} wide, but must be at least 2 * max(1, samples_per_insert) "
        f"= {required:g} wide (a single error_buffer must be >= {required / 2:g}): "
        "a narrower buffer can block inserts and samples at the same time, for good"
      )
    # Reverb's second rule: once min_size_to_sample items are in and nothing
    # was sampled, diff == samples_per_insert * min_size_to_sample. If min_diff
    # is above that, no sample can ever start, so inserts fill the buffer and
    # stop too: a certain deadlock, rejected.
    if min_diff > offset:
      raise ValueError(
        f"SampleToInsertRatio: the error buffer's lower end ({min_diff:g}) is above "
        f"samples_per_insert * min_size_to_sample ({offset:g}): no sample could ever "
        f"proceed, and inserts would block once the buffer is full (a deadlock as soon as "
        f"{min_size} items are inserted)"
      )
    # Reverb's third rule, a warning only: if max_diff is below that point,
    # inserts block as soon as the table reaches min_size_to_sample and wait
    # for samples. Fine with a concurrent sampler (the usual set-up); a
    # program that inserts everything before it samples deadlocks.
    if max_diff < offset:
      log.warning(
        "SampleToInsertRatio: the error buffer's upper end (%g) is below samples_per_insert * "
        "min_size_to_sample (%g): inserts will block as soon as %d items are inserted until "
        "something samples; without a concurrent sampler this deadlocks",
        max_diff,
        offset,
        min_size,
      )
    super().__init__(spi, min_size, min_diff, max_diff)


class Queue(RateLimiter):
  """Makes a table a bounded queue: use `Table.queue`, which pairs it with Fifo selectors.

  Samples wait while the table is empty; inserts wait while `size` items are
  waiting to be sampled. Each item is sampled once (max_times_sampled=1).
  """

  def __init__(self, size: int):
    super().__init__(
      samples_per_insert=1.0,
      min_size_to_sample=1,
      min_diff=0.0,
      max_diff=float(_positive_int("size", size)),
    )


class Stack(RateLimiter):
  """Makes a table a bounded stack: use `Table.stack`, which pairs it with Lifo selectors."""

  def __init__(self, size: int):
    super().__init__(
      samples_per_insert=1.0,
      min_size_to_sample=1,
      min_diff=0.0,
      max_diff=float(_positive_int("size", size)),
    )

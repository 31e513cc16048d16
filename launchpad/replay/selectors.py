"""Item selectors: which item a table samples next, and which it evicts.

A table holds two selectors, a sampler and a remover, and tells both about
every item it inserts, re-prioritises and deletes. `sample()` then names one
of the keys, with the probability that it had of being chosen. The names are
Reverb's (`reverb.selectors`), so Reverb users recognise them:

  Uniform()                every item equally likely
  Prioritized(exponent)    probability proportional to priority ** exponent,
                           a sum tree over numpy arrays: O(log n) everything
  Fifo() / Lifo()          the oldest / newest item
  MaxHeap() / MinHeap()    the highest / lowest priority; ties go to the item
                           least recently inserted or updated

Priorities must be finite and >= 0, for every selector alike, so that a table
can switch selectors without its data becoming invalid. A selector is not
thread-safe on its own: the table serialises every call under its lock.
"""

from __future__ import annotations

import abc
import collections
import heapq
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KeyWithProbability = tuple[int, float]


def check_priority(priority: Any) -> float:
  """Returns `priority` as a float, or raises ValueError unless it is finite and >= 0."""
  if type(priority) is float and 0.0 <= priority < math.inf:
    return priority  # the common case, quickly (NaN fails the comparison)
  if isinstance(priority, bool) or not isinstance(priority, int | float | np.integer | np.floating):
    raise ValueError(f"priority must be a real number, got {priority!r}")
  value = float(priority)
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"priority must be finite and >= 0, got {priority!r}")
  return value


def check_priorities(priorities: Any, count: int) -> list[float]:
  """`count` checked priorities from one priority or a sequence (or array) of them, for a batch."""
  if isinstance(priorities, np.ndarray):
    priorities = priorities.tolist()
  if not isinstance(priorities, Sequence) or isinstance(priorities, str):
    return [check_priority(priorities)] * count
  if len(priorities) != count:
    raise ValueError(f"{count} items but {len(priorities)} priorities")
  values = []
  for i, priority in enumerate(priorities):
    try:
      values.append(check_priority(priority))
    except ValueError as e:
      raise ValueError(f"item {i} of the batch: {e}") from None
  return values


class ItemSelector(abc.ABC):
  """The interface every selector implements, as sampler or as remover.

  Keys are the table's item keys (ints). Errors: inserting a key that is
  present, or updating or deleting one that is absent, raises KeyError;
  an invalid priority raises ValueError; sampling an empty selector raises
  IndexError. A call that raises changes nothing.
  """

  #: The order in which a table re-inserts items when it restores a snapshot
  #: so that this selector ends up choosing exactly as before: "inserted"
  #: (first insertion) or "updated" (last insert or priority update, which
  #: heaps use to break ties).
  restore_order: str = "inserted"

  #: True when `sample()` always names the same item for the same contents.
  is_deterministic: bool = False

  @abc.abstractmethod
  def insert(self, key: int, priority: float) -> None:
    """Adds `key` with `priority`."""

  @abc.abstractmethod
  def update(self, key: int, priority: float) -> None:
    """Changes the priority of `key`."""

  @abc.abstractmethod
  def delete(self, key: int) -> None:
    """Removes `key`."""

  @abc.abstractmethod
  def sample(self) -> KeyWithProbability:
    """Chooses a key; returns it with the probability it had of being chosen."""

  @abc.abstractmethod
  def clear(self) -> None:
    """Removes every key."""

  @abc.abstractmethod
  def __len__(self) -> int: ...

  @abc.abstractmethod
  def __contains__(self, key: object) -> bool: ...

  @abc.abstractmethod
  def options(self) -> dict[str, Any]:
    """The selector's configuration, as `from_options` takes it back (for info and checkpoints)."""

  def sample_many(self, num_samples: int) -> list[KeyWithProbability]:
    """`num_samples` independent draws (with replacement) from the current contents."""
    return [self.sample() for _ in range(num_samples)]

  def insert_many(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """Inserts several keys, all or none (validates everything first)."""
    self.insert_unchecked(keys, self._check_new(keys, priorities))

  def insert_unchecked(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """insert_many without its checks: the keys are new and distinct, the priorities checked.

    A table that checked them itself calls this directly. All or none still:
    it may raise ValueError (an overflowing weight) before changing anything.
    """
    for key, priority in zip(keys, priorities, strict=True):
      self.insert(key, priority)

  def update_many(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """Updates several keys, all or none (validates everything first)."""
    values = self._check_present(keys, priorities)
    for key, priority in zip(keys, values, strict=True):
      self.update(key, priority)

  def _check_new(self, keys: Sequence[int], priorities: Sequence[float]) -> list[float]:
    if len(keys) != len(priorities):
      raise ValueError(f"{len(keys)} keys but {len(priorities)} priorities")
    values = [check_priority(p) for p in priorities]
    seen: set[int] = set()
    for key in keys:
      if key in self or key in seen:
        raise KeyError(f"key {key} already inserted")
      seen.add(key)
    return values

  def _check_present(self, keys: Sequence[int], priorities: Sequence[float]) -> list[float]:
    if len(keys) != len(priorities):
      raise ValueError(f"{len(keys)} keys but {len(priorities)} priorities")
    values = [check_priority(p) for p in priorities]
    for key in keys:
      if key not in self:
        raise KeyError(f"key {key} not found")
    return values

  def _empty(self) -> IndexError:
    return IndexError(f"{type(self).__name__}: cannot sample, the selector holds no items")

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if k != "type")
    return f"{type(self).__name__}({args})"


class Uniform(ItemSelector):
  """Samples every item with the same probability, 1/n. O(1) per operation."""

  def __init__(self, seed: int | None = None):
    """Args: seed: seeds the random draws (None: from the OS), for reproducible tests."""
    self._rng = random.Random(seed)
    self._np_rng = np.random.default_rng(seed)
    self._keys: list[int] = []
    self._index: dict[int, int] = {}

  def insert(self, key: int, priority: float) -> None:
    check_priority(priority)
    if key in self._index:
      raise KeyError(f"key {key} already inserted")
    self._index[key] = len(self._keys)
    self._keys.append(key)

  def update(self, key: int, priority: float) -> None:
    check_priority(priority)
    if key not in self._index:
      raise KeyError(f"key {key} not found")

  def delete(self, key: int) -> None:
    position = self._index.pop(key, None)
    if position is None:
      raise KeyError(f"key {key} not found")
    last = self._keys.pop()
    if position < len(self._keys):  # move the last key into the hole
      self._keys[position] = last
      self._index[last] = position

  def sample(self) -> KeyWithProbability:
    n = len(self._keys)
    if not n:
      raise self._empty()
    return self._keys[min(int(self._rng.random() * n), n - 1)], 1.0 / n

  def sample_many(self, num_samples: int) -> list[KeyWithProbability]:
    n = len(self._keys)
    if not n:
      raise self._empty()
    keys = self._keys
    # floor(u * n) of uniform floats: half the time of Generator.integers for a batch.
    positions = np.minimum(self._np_rng.random(num_samples) * n, n - 1).astype(np.intp)
    return [(keys[i], 1.0 / n) for i in positions.tolist()]

  def insert_unchecked(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    start = len(self._keys)
    self._keys.extend(keys)
    self._index.update(zip(keys, range(start, start + len(keys)), strict=True))

  def clear(self) -> None:
    self._keys.clear()
    self._index.clear()

  def __len__(self) -> int:
    return len(self._keys)

  def __contains__(self, key: object) -> bool:
    return key in self._index

  def options(self) -> dict[str, Any]:
    return {"type": "Uniform"}


class Prioritized(ItemSelector):
  """Samples items with probability proportional to `priority ** priority_exponent`.

  A sum tree: a complete binary tree stored in a numpy array (node i has
  children 2i and 2i+1, the root is node 1) whose leaves are the items'
  weights and whose inner nodes are the sums of their two children. Insert,
  update, delete and sample each walk one root-to-leaf path: O(log n). Items
  occupy the first n leaves; a delete moves the last item into the hole. The
  arrays double when full. Inner nodes are recomputed as left + right on every
  change rather than adjusted by differences, so rounding errors never build up.

  As in Reverb, a priority of 0 has weight 0, even with exponent 0 (so 0 means
  "never sample this" whatever the exponent); and if every weight is 0 the
  selector samples uniformly, reporting probability 1/n.
  """

  def __init__(
    self, priority_exponent: float, seed: int | None = None, initial_capacity: int = 1024
  ):
    """Args:
    priority_exponent: >= 0; 0 samples every item of non-zero priority equally,
      1 is proportional to priority.
    seed: seeds the random draws (None: from the OS), for reproducible tests.
    initial_capacity: leaves allocated at first (rounded up to a power of two).
    """
    exponent = float(priority_exponent)
    if not math.isfinite(exponent) or exponent < 0:
      raise ValueError(f"priority_exponent must be finite and >= 0, got {priority_exponent!r}")
    self._exponent = exponent
    self._initial_capacity = 1 << max(1, int(initial_capacity) - 1).bit_length()
    self._rng = random.Random(seed)
    self._np_rng = np.random.default_rng(seed)
    self._index: dict[int, int] = {}  # key -> leaf position
    self._allocate(self._initial_capacity)

  @property
  def priority_exponent(self) -> float:
    return self._exponent

  @property
  def capacity(self) -> int:
    """Leaves allocated now (a power of two, at least the number of items)."""
    return self._capacity

  @property
  def total_weight(self) -> float:
    """The sum of every item's weight (the root of the tree)."""
    return float(self._tree[1])

  def probability(self, key: int) -> float:
    """The probability that the next `sample()` returns `key`."""
    position = self._index[key]
    total = self._tree[1]
    if total <= 0:
      return 1.0 / len(self._index)
    return float(self._tree[self._capacity + position] / total)

  def weight(self, priority: float) -> float:
    """The sampling weight of an item of this priority."""
    if priority == 0:
      return 0.0
    try:
      value = priority**self._exponent
    except OverflowError:
      value = math.inf
    if not math.isfinite(value):
      raise ValueError(f"priority {priority!r} ** exponent {self._exponent} overflows a float")
    return value

  def insert(self, key: int, priority: float) -> None:
    weight = self.weight(check_priority(priority))
    if key in self._index:
      raise KeyError(f"key {key} already inserted")
    position = len(self._index)
    if position == self._capacity:
      self._grow(2 * self._capacity)
    self._index[key] = position
    self._keys[position] = key
    self._set(position, weight)

  def update(self, key: int, priority: float) -> None:
    weight = self.weight(check_priority(priority))
    position = self._index.get(key)
    if position is None:
      raise KeyError(f"key {key} not found")
    self._set(position, weight)

  def delete(self, key: int) -> None:
    position = self._index.pop(key, None)
    if position is None:
      raise KeyError(f"key {key} not found")
    last = len(self._index)  # the position of the last item, before the delete
    if position != last:
      moved = int(self._keys[last])
      self._keys[position] = moved
      self._index[moved] = position
      self._set(position, float(self._tree[self._capacity + last]))
    self._set(last, 0.0)

  def sample(self) -> KeyWithProbability:
    n = len(self._index)
    if not n:
      raise self._empty()
    tree = self._tree
    capacity = self._capacity
    total = tree[1]
    if total <= 0:  # every weight is zero: sample uniformly
      return int(self._keys[min(int(self._rng.random() * n), n - 1)]), 1.0 / n
    target = self._rng.random() * total
    node = 1
    while node < capacity:
      node <<= 1  # left child
      left = tree[node]
      # Go right when the target lies past the left subtree, unless rounding
      # put it there while the right subtree has no weight: every node entered
      # then has a positive sum, so the walk ends on a leaf of positive weight.
      if target >= left and tree[node + 1] > 0:
        target -= left
        node += 1
    return int(self._keys[node - capacity]), float(tree[node] / total)

  def sample_many(self, num_samples: int) -> list[KeyWithProbability]:
    """Vectorised: all draws walk the tree together, one numpy step per level."""
    n = len(self._index)
    if not n:
      raise self._empty()
    tree = self._tree
    capacity = self._capacity
    total = tree[1]
    if total <= 0:
      positions = self._np_rng.integers(0, n, num_samples)
      return [(key, 1.0 / n) for key in self._keys[positions].tolist()]
    target = self._np_rng.random(num_samples) * total
    node = np.ones(num_samples, dtype=np.int64)
    while node[0] < capacity:
      node <<= 1
      left = tree[node]
      right = (target >= left) & (tree[node + 1] > 0)
      target -= np.where(right, left, 0.0)
      node += right
    probabilities = (tree[node] / total).tolist()
    return list(zip(self._keys[node - capacity].tolist(), probabilities, strict=True))

  def insert_unchecked(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """Vectorised: fills the next leaves, then recomputes the nodes above them level by level.

    O(m + log n) numpy work for m keys, or O(n) when the tree has to grow.
    """
    if not keys:
      return
    weights = [self.weight(p) for p in priorities]
    start = len(self._index)
    end = start + len(weights)
    grow = end > self._capacity
    if grow:
      self._grow(1 << (end - 1).bit_length(), rebuild=False)
    self._index.update(zip(keys, range(start, end), strict=True))
    self._keys[start:end] = np.asarray(keys, dtype=np.uint64)
    self._tree[self._capacity + start : self._capacity + end] = weights
    if grow:
      self._rebuild()
      return
    tree = self._tree
    low, high = self._capacity + start, self._capacity + end  # the nodes [low, high) changed
    while low > 1:
      low, high = low >> 1, ((high - 1) >> 1) + 1
      tree[low:high] = tree[2 * low : 2 * high : 2] + tree[2 * low + 1 : 2 * high : 2]

  def update_many(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """Vectorised: sets the leaves, then recomputes each level's touched parents once."""
    values = self._check_present(keys, priorities)
    if not keys:
      return
    weights = [self.weight(p) for p in values]
    nodes = np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))
    nodes += self._capacity
    tree = self._tree
    tree[nodes] = weights
    while True:
      nodes = np.unique(nodes >> 1)
      tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]
      if nodes[0] == 1:
        break

  def clear(self) -> None:
    self._index.clear()
    self._allocate(self._initial_capacity)

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, key: object) -> bool:
    return key in self._index

  def options(self) -> dict[str, Any]:
    return {"type": "Prioritized", "priority_exponent": self._exponent}

  def _allocate(self, capacity: int) -> None:
    self._capacity = capacity
    self._tree = np.zeros(2 * capacity, dtype=np.float64)
    self._keys = np.zeros(capacity, dtype=np.uint64)

  def _set(self, position: int, weight: float) -> None:
    tree = self._tree
    node = self._capacity + position
    tree[node] = weight
    node >>= 1
    while node:
      tree[node] = tree[2 * node] + tree[2 * node + 1]
      node >>= 1

  def _grow(self, capacity: int, rebuild: bool = True) -> None:
    old_capacity = self._capacity
    old_tree, old_keys = self._tree, self._keys
    self._allocate(capacity)
    self._tree[capacity : capacity + old_capacity] = old_tree[old_capacity:]
    self._keys[:old_capacity] = old_keys
    if rebuild:
      self._rebuild()

  def _rebuild(self) -> None:
    """Recomputes every inner node from the leaves, one numpy step per level: O(capacity)."""
    tree = self._tree
    low = self._capacity
    while low > 1:
      high, low = low, low // 2
      tree[low:high] = tree[2 * low : 2 * high : 2] + tree[2 * low + 1 : 2 * high : 2]


class _Ordered(ItemSelector):
  """Keys kept in insertion order (an OrderedDict: O(1) at both ends and for deletes)."""

  is_deterministic = True

  def __init__(self):
    self._keys: collections.OrderedDict[int, None] = collections.OrderedDict()

  def insert(self, key: int, priority: float) -> None:
    check_priority(priority)
    if key in self._keys:
      raise KeyError(f"key {key} already inserted")
    self._keys[key] = None

  def update(self, key: int, priority: float) -> None:
    """Checks the key and priority; the order does not depend on priorities."""
    check_priority(priority)
    if key not in self._keys:
      raise KeyError(f"key {key} not found")

  def insert_unchecked(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    ordered = self._keys
    for key in keys:  # 3-5x quicker than OrderedDict.update
      ordered[key] = None

  def delete(self, key: int) -> None:
    try:
      del self._keys[key]
    except KeyError:
      raise KeyError(f"key {key} not found") from None

  def clear(self) -> None:
    self._keys.clear()

  def __len__(self) -> int:
    return len(self._keys)

  def __contains__(self, key: object) -> bool:
    return key in self._keys

  def options(self) -> dict[str, Any]:
    return {"type": type(self).__name__}


class Fifo(_Ordered):
  """Samples the oldest item (first in, first out), with probability 1."""

  def sample(self) -> KeyWithProbability:
    if not self._keys:
      raise self._empty()
    return next(iter(self._keys)), 1.0


class Lifo(_Ordered):
  """Samples the newest item (last in, first out), with probability 1."""

  def sample(self) -> KeyWithProbability:
    if not self._keys:
      raise self._empty()
    return next(reversed(self._keys)), 1.0


class _Heap(ItemSelector):
  """Samples the item of extreme priority; ties go to the least recently inserted or updated.

  A binary heap (heapq) of (sign * priority, sequence, key) with lazy deletion:
  an update pushes a new entry and a delete only forgets the key; stale
  entries are dropped when they reach the top, and the heap is rebuilt when
  they outnumber the live ones. Amortised O(log n) per operation.
  """

  restore_order = "updated"
  is_deterministic = True
  _sign: float

  def __init__(self):
    self._heap: list[tuple[float, int, int]] = []
    self._live: dict[int, tuple[int, float]] = {}  # key -> (sequence, priority)
    self._sequence = 0

  def insert(self, key: int, priority: float) -> None:
    value = check_priority(priority)
    if key in self._live:
      raise KeyError(f"key {key} already inserted")
    self._push(key, value)

  def update(self, key: int, priority: float) -> None:
    value = check_priority(priority)
    if key not in self._live:
      raise KeyError(f"key {key} not found")
    self._push(key, value)

  def delete(self, key: int) -> None:
    if self._live.pop(key, None) is None:
      raise KeyError(f"key {key} not found")
    self._maybe_compact()

  def insert_unchecked(self, keys: Sequence[int], priorities: Sequence[float]) -> None:
    """Pushes every key in order; into an empty heap, in O(n) (one heapify)."""
    heap, live, sign = self._heap, self._live, self._sign
    empty = not heap
    sequence = self._sequence
    for key, priority in zip(keys, priorities, strict=True):
      live[key] = (sequence, priority)
      if empty:
        heap.append((sign * priority, sequence, key))
      else:
        heapq.heappush(heap, (sign * priority, sequence, key))
      sequence += 1
    self._sequence = sequence
    if empty:
      heapq.heapify(heap)
    self._maybe_compact()

  def sample(self) -> KeyWithProbability:
    heap, live = self._heap, self._live
    while heap:
      _, sequence, key = heap[0]
      entry = live.get(key)
      if entry is not None and entry[0] == sequence:
        return key, 1.0
      heapq.heappop(heap)  # stale: deleted or updated since
    raise self._empty()

  def clear(self) -> None:
    self._heap.clear()
    self._live.clear()

  def __len__(self) -> int:
    return len(self._live)

  def __contains__(self, key: object) -> bool:
    return key in self._live

  def options(self) -> dict[str, Any]:
    return {"type": type(self).__name__}

  def _push(self, key: int, priority: float) -> None:
    sequence = self._sequence
    self._sequence += 1
    self._live[key] = (sequence, priority)
    heapq.heappush(self._heap, (self._sign * priority, sequence, key))
    self._maybe_compact()

  def _maybe_compact(self) -> None:
    if len(self._heap) > 2 * len(self._live) + 64:
      sign = self._sign
      self._heap = [(sign * p, s, k) for k, (s, p) in self._live.items()]
      heapq.heapify(self._heap)


class MaxHeap(_Heap):
  """Samples the item with the highest priority, with probability 1."""

  _sign = -1.0


class MinHeap(_Heap):
  """Samples the item with the lowest priority, with probability 1."""

  _sign = 1.0


_TYPES: dict[str, type[ItemSelector]] = {
  cls.__name__: cls for cls in (Uniform, Prioritized, Fifo, Lifo, MaxHeap, MinHeap)
}


def from_options(options: Mapping[str, Any]) -> ItemSelector:
  """Builds a new, empty selector from `ItemSelector.options()` (e.g. from a checkpoint)."""
  kwargs = dict(options)
  name = kwargs.pop("type", None)
  cls = _TYPES.get(name)  # type: ignore[arg-type]
  if cls is None:
    raise ValueError(f"unknown selector type {name!r}; known: {', '.join(_TYPES)}")
  return cls(**kwargs)

"""Selectors: their distributions, the sum tree against brute force, ordering and errors."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from launchpad.replay import selectors
from launchpad.replay.selectors import Fifo, Lifo, MaxHeap, MinHeap, Prioritized, Uniform

ALL = {
  "Uniform": lambda: Uniform(seed=0),
  "Prioritized": lambda: Prioritized(0.7, seed=0),
  "Fifo": Fifo,
  "Lifo": Lifo,
  "MaxHeap": MaxHeap,
  "MinHeap": MinHeap,
}


def chi2_critical(df: int, z: float = 3.29) -> float:
  """The chi-square quantile at the normal quantile z (3.29: p = 0.0005), Wilson-Hilferty."""
  c = 2.0 / (9.0 * df)
  return df * (1.0 - c + z * math.sqrt(c)) ** 3


def assert_matches(counts: dict, expected: dict, draws: int) -> None:
  """Chi-square goodness of fit of observed counts against expected probabilities."""
  assert set(counts) <= {k for k, p in expected.items() if p > 0}, "sampled a zero-probability key"
  support = [k for k, p in expected.items() if p > 0]
  statistic = sum(
    (counts.get(k, 0) - draws * expected[k]) ** 2 / (draws * expected[k]) for k in support
  )
  assert statistic < chi2_critical(len(support) - 1), (statistic, counts)


def tally(draws) -> dict:
  counts: dict = {}
  for key, _ in draws:
    counts[key] = counts.get(key, 0) + 1
  return counts


# Distributions.


def test_uniform_samples_every_key_equally_and_reports_one_over_n():
  selector = Uniform(seed=1)
  for key in range(20):
    selector.insert(key, priority=float(key))  # priorities play no part
  for key in (3, 7, 11):
    selector.delete(key)
  draws = [selector.sample() for _ in range(17_000)]
  assert {p for _, p in draws} == {1 / 17}
  assert_matches(tally(draws), {k: 1 / 17 for k in range(20) if k not in (3, 7, 11)}, len(draws))
  assert_matches(
    tally(selector.sample_many(17_000)),
    {k: 1 / 17 for k in range(20) if k not in (3, 7, 11)},
    17_000,
  )


@pytest.mark.parametrize("exponent", [1.0, 0.5, 2.0])
def test_prioritized_samples_in_proportion_to_priority_to_the_exponent(exponent):
  priorities = {10: 0.5, 11: 1.0, 12: 2.0, 13: 3.0, 14: 5.0, 15: 0.0, 16: 1.5}
  selector = Prioritized(exponent, seed=2)
  for key, priority in priorities.items():
    selector.insert(key, priority)
  weights = {k: (p**exponent if p else 0.0) for k, p in priorities.items()}
  total = sum(weights.values())
  expected = {k: w / total for k, w in weights.items()}
  draws = [selector.sample() for _ in range(30_000)]
  assert all(math.isclose(p, expected[k], rel_tol=1e-12) for k, p in draws)
  assert_matches(tally(draws), expected, len(draws))
  batch = selector.sample_many(30_000)
  assert all(math.isclose(p, expected[k], rel_tol=1e-12) for k, p in batch)
  assert_matches(tally(batch), expected, len(batch))


def test_prioritized_exponent_zero_is_uniform_over_nonzero_priorities():
  selector = Prioritized(0.0, seed=3)
  for key, priority in enumerate([0.1, 100.0, 0.0, 7.0, 0.0, 3.0]):
    selector.insert(key, priority)
  draws = [selector.sample() for _ in range(8_000)]
  assert_matches(tally(draws), {0: 0.25, 1: 0.25, 2: 0.0, 3: 0.25, 4: 0.0, 5: 0.25}, len(draws))


def test_prioritized_with_all_priorities_zero_samples_uniformly():
  """Reverb's rule: when every weight is zero the selector samples uniformly, reporting 1/n."""
  selector = Prioritized(1.0, seed=4)
  for key in range(8):
    selector.insert(key, 0.0)
  assert selector.total_weight == 0
  draws = [selector.sample() for _ in range(8_000)]
  assert {p for _, p in draws} == {1 / 8}
  assert_matches(tally(draws), dict.fromkeys(range(8), 1 / 8), len(draws))
  batch = selector.sample_many(8_000)
  assert {p for _, p in batch} == {1 / 8}
  assert_matches(tally(batch), dict.fromkeys(range(8), 1 / 8), len(batch))
  # One positive priority takes every sample from then on.
  selector.update(5, 0.25)
  assert {k for k, _ in selector.sample_many(500)} == {5}
  assert selector.sample() == (5, 1.0)


def test_prioritized_never_samples_zero_priority_next_to_tiny_weights():
  """The tree walk must not land on a zero leaf even when rounding pushes the target right."""
  selector = Prioritized(1.0, seed=5, initial_capacity=2)
  for key in range(300):
    selector.insert(key, 1e-300 if key % 3 == 0 else 0.0)
  selector.insert(1000, 1.0)
  keys = {k for k, _ in selector.sample_many(20_000)} | {selector.sample()[0] for _ in range(5_000)}
  assert all(k == 1000 or k % 3 == 0 for k in keys)


class FixedDraws:
  """Stands in for the selector's random generators: every draw is `u`."""

  def __init__(self, u: float):
    self.u = u

  def random(self, size=None):
    return self.u if size is None else np.full(size, self.u)


def test_tree_walk_survives_rounding_past_a_subtree_sum():
  """Found by search: the largest draw below 1 rounds past the sums on the way down, onto
  a subtree of weight zero; the walk must still end on an item that has weight."""
  weights = [0.10000001000000001, 0.0, 0.3333333666666667, 0.0, 2.9999997]
  selector = Prioritized(1.0, initial_capacity=8)
  for key, weight in enumerate(weights):
    selector.insert(key, weight)
  selector._rng = selector._np_rng = FixedDraws(1 - 2**-53)
  key, probability = selector.sample()
  assert weights[key] > 0 and probability == pytest.approx(weights[key] / sum(weights))
  assert all(weights[k] > 0 for k, _ in selector.sample_many(4))


# The sum tree against a brute-force reference.


def check_tree(selector: Prioritized, reference: dict[int, float]) -> None:
  """Every inner node is exactly the sum of its children; leaves match the reference."""
  tree, capacity = selector._tree, selector.capacity
  assert capacity & (capacity - 1) == 0 and capacity >= len(reference)
  inner = np.arange(1, capacity)
  np.testing.assert_array_equal(tree[inner], tree[2 * inner] + tree[2 * inner + 1])
  assert not tree[capacity + len(reference) : 2 * capacity].any(), "unused leaves must be zero"
  weights = {k: (p**selector.priority_exponent if p else 0.0) for k, p in reference.items()}
  total = sum(weights.values())
  assert selector.total_weight == pytest.approx(total, rel=1e-9)
  for key, weight in weights.items():
    expected = weight / total if total else 1 / len(reference)
    assert selector.probability(key) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_sum_tree_matches_brute_force_under_random_operations():
  rng = random.Random(6)
  selector = Prioritized(0.6, seed=6, initial_capacity=4)
  reference: dict[int, float] = {}
  capacities = set()
  next_key = 0
  for step in range(6_000):
    operation = rng.random()
    if operation < 0.45 or len(reference) < 5:
      priority = rng.choice([0.0, rng.uniform(0, 10), rng.expovariate(0.1)])
      selector.insert(next_key, priority)
      reference[next_key] = priority
      next_key += 1
    elif operation < 0.75:
      key = rng.choice(list(reference))
      priority = rng.uniform(0, 50)
      selector.update(key, priority)
      reference[key] = priority
    else:
      key = rng.choice(list(reference))
      selector.delete(key)
      del reference[key]
    capacities.add(selector.capacity)
    assert len(selector) == len(reference)
    if step % 250 == 0:
      check_tree(selector, reference)
      key, _ = selector.sample()
      assert key in reference and reference[key] > 0
  check_tree(selector, reference)
  assert len(capacities) >= 4, "the arrays should have doubled several times"
  # Drain it: deleting everything leaves an all-zero tree.
  for key in list(reference):
    selector.delete(key)
  assert len(selector) == 0 and not selector._tree.any()
  with pytest.raises(IndexError):
    selector.sample()


def test_bulk_operations_match_one_at_a_time():
  rng = np.random.default_rng(7)
  draw = random.Random(7)
  keys = list(dict.fromkeys(draw.getrandbits(64) for _ in range(3_000)))  # the whole uint64 range
  assert max(keys) >= 2**63
  priorities = rng.exponential(2.0, size=3_000).tolist()
  one, bulk = Prioritized(0.9, initial_capacity=8), Prioritized(0.9, initial_capacity=8)
  for key, priority in zip(keys, priorities, strict=True):
    one.insert(key, priority)
  # Batches that grow the tree (a full rebuild) and batches that fit (the nodes above them).
  for start, end in ((0, 1000), (1000, 1010), (1010, 2000), (2000, 2001), (2001, 3000)):
    bulk.insert_many(keys[start:end], priorities[start:end])
    check_tree(bulk, dict(zip(keys[:end], priorities[:end], strict=True)))
  updated = keys[::7]
  new_priorities = rng.uniform(0, 3, size=len(updated)).tolist()
  for key, priority in zip(updated, new_priorities, strict=True):
    one.update(key, priority)
  bulk.update_many(updated, new_priorities)
  reference = dict(zip(keys, priorities, strict=True)) | dict(
    zip(updated, new_priorities, strict=True)
  )
  check_tree(bulk, reference)
  for key in keys[::50]:
    assert bulk.probability(key) == pytest.approx(one.probability(key), rel=1e-12)
  assert {k for k, _ in bulk.sample_many(100)} <= set(keys)
  assert bulk.sample()[0] in reference


def test_bulk_operations_are_all_or_nothing():
  selector = Prioritized(1.0)
  selector.insert(1, 1.0)
  with pytest.raises(ValueError):
    selector.insert_many([2, 3], [1.0, -1.0])
  with pytest.raises(KeyError):
    selector.insert_many([2, 1], [1.0, 1.0])
  with pytest.raises(KeyError):
    selector.update_many([1, 99], [2.0, 2.0])
  with pytest.raises(ValueError):
    selector.update_many([1], [math.nan])
  assert len(selector) == 1 and selector.total_weight == 1.0


# Ordered and heap selectors.


def test_fifo_and_lifo_order_ignores_priorities():
  fifo, lifo = Fifo(), Lifo()
  for selector in (fifo, lifo):
    for key, priority in [(5, 1.0), (3, 9.0), (8, 0.0), (1, 4.0)]:
      selector.insert(key, priority)
    selector.update(8, 100.0)
  assert fifo.sample() == (5, 1.0) and lifo.sample() == (1, 1.0)
  fifo.delete(5)
  lifo.delete(1)
  assert fifo.sample() == (3, 1.0) and lifo.sample() == (8, 1.0)
  fifo.insert(5, 1.0)  # re-inserted keys go to the back
  assert [fifo.sample()[0] for _ in range(2)] == [3, 3]
  order = []
  while len(fifo):
    key, _ = fifo.sample()
    order.append(key)
    fifo.delete(key)
  assert order == [3, 8, 1, 5]


def test_heaps_pick_the_extreme_priority_and_break_ties_by_least_recent_change():
  high, low = MaxHeap(), MinHeap()
  for selector in (high, low):
    for key, priority in [(1, 2.0), (2, 5.0), (3, 5.0), (4, 0.5), (5, 0.5)]:
      selector.insert(key, priority)
  assert high.sample() == (2, 1.0)  # 2 and 3 tie; 2 was inserted first
  assert low.sample() == (4, 1.0)
  high.update(2, 5.0)  # same priority, but now 3 is the least recently changed
  low.update(4, 0.5)
  assert high.sample()[0] == 3 and low.sample()[0] == 5
  high.update(1, 9.0)
  low.update(1, 0.0)
  assert high.sample()[0] == 1 and low.sample()[0] == 1
  high.delete(1)
  low.delete(1)
  assert high.sample()[0] == 3 and low.sample()[0] == 5


def test_heap_stays_compact_under_many_updates():
  selector = MaxHeap()
  for key in range(10):
    selector.insert(key, float(key))
  for round_ in range(2_000):
    selector.update(round_ % 10, float(round_))
  assert len(selector._heap) <= 2 * len(selector) + 65
  assert selector.sample()[0] == 1999 % 10


@pytest.mark.parametrize("name", ["Fifo", "Lifo", "MaxHeap", "MinHeap"])
def test_deterministic_selectors_match_a_reference_model(name):
  """Random operations against brute force: the model's choice is computed from scratch."""
  rng = random.Random(8)
  selector = ALL[name]()
  live: dict[int, tuple[float, int, int]] = {}  # key -> (priority, inserted_at, changed_at)
  clock = 0
  for key in range(2_000):
    clock += 1
    action = rng.random()
    if action < 0.5 or not live:
      priority = float(rng.randint(0, 5))
      selector.insert(key, priority)
      live[key] = (priority, clock, clock)
    elif action < 0.75:
      victim = rng.choice(list(live))
      priority = float(rng.randint(0, 5))
      selector.update(victim, priority)
      live[victim] = (priority, live[victim][1], clock)
    else:
      victim = rng.choice(list(live))
      selector.delete(victim)
      del live[victim]
    if not live:
      continue
    if name == "Fifo":
      expected = min(live, key=lambda k: live[k][1])
    elif name == "Lifo":
      expected = max(live, key=lambda k: live[k][1])
    elif name == "MaxHeap":
      expected = min(live, key=lambda k: (-live[k][0], live[k][2]))
    else:
      expected = min(live, key=lambda k: (live[k][0], live[k][2]))
    assert selector.sample() == (expected, 1.0)


@pytest.mark.parametrize("name", list(ALL))
def test_insert_many_matches_one_at_a_time_and_is_all_or_nothing(name):
  one, bulk = ALL[name](), ALL[name]()
  priorities = [float(p % 7) for p in range(300)]
  for key, priority in enumerate(priorities):
    one.insert(key, priority)
  for start in range(0, 300, 37):
    bulk.insert_many(list(range(start, min(start + 37, 300))), priorities[start : start + 37])
  for key in range(0, 300, 3):
    one.delete(key)
    bulk.delete(key)
  assert len(one) == len(bulk) == 200 and all(k in bulk for k in range(1, 300, 3))
  if one.is_deterministic:
    while len(one):  # both give the same items in the same order
      key, probability = one.sample()
      assert bulk.sample() == (key, probability)
      one.delete(key)
      bulk.delete(key)
  elif name == "Prioritized":
    assert all(bulk.probability(k) == pytest.approx(one.probability(k)) for k in range(1, 300, 3))
  bulk.insert(5000, 1.0)
  for keys, values, error in (
    ([1000, 1000], [1.0, 1.0], KeyError),  # twice in the batch
    ([1000, 5000], [1.0, 1.0], KeyError),  # already there
    ([1000, 1001], [1.0, math.nan], ValueError),
    ([1000], [1.0, 2.0], ValueError),
  ):
    size = len(bulk)
    with pytest.raises(error):
      bulk.insert_many(keys, values)
    assert len(bulk) == size and 1000 not in bulk


# Errors and options.


@pytest.mark.parametrize("name", list(ALL))
def test_errors_change_nothing(name):
  selector = ALL[name]()
  selector.insert(1, 1.0)
  selector.insert(2, 2.0)
  before = selector.sample()
  with pytest.raises(KeyError):
    selector.insert(1, 3.0)
  with pytest.raises(KeyError):
    selector.update(3, 1.0)
  with pytest.raises(KeyError):
    selector.delete(3)
  for bad in (-1.0, math.nan, math.inf, -math.inf, "1.0", None, True):
    with pytest.raises(ValueError, match="priority"):
      selector.insert(9, bad)
    with pytest.raises(ValueError, match="priority"):
      selector.update(1, bad)
  assert len(selector) == 2 and 9 not in selector
  if selector.is_deterministic:
    assert selector.sample() == before
  selector.clear()
  assert len(selector) == 0
  with pytest.raises(IndexError, match="no items"):
    selector.sample()
  with pytest.raises(IndexError):
    selector.sample_many(3)


def test_prioritized_rejects_bad_exponents_and_overflowing_weights():
  for bad in (-0.5, math.nan, math.inf):
    with pytest.raises(ValueError, match="priority_exponent"):
      Prioritized(bad)
  selector = Prioritized(3.0)
  with pytest.raises(ValueError, match="overflows"):
    selector.insert(1, 1e200)
  assert len(selector) == 0


@pytest.mark.parametrize("name", list(ALL))
def test_options_round_trip(name):
  selector = ALL[name]()
  rebuilt = selectors.from_options(selector.options())
  assert type(rebuilt) is type(selector) and rebuilt.options() == selector.options()
  with pytest.raises(ValueError, match="unknown selector"):
    selectors.from_options({"type": "Random"})

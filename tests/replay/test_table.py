"""Table: data through chunks, queue/stack, removal, errors that change nothing, snapshots."""

from __future__ import annotations

import gc
import math
import pickle
import re
import threading
import weakref

import numpy as np
import pytest

from launchpad.replay import ChunkStore, RateLimiterTimeoutError, Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel


def table_with_chunk(name="t", sampler=None, remover=None, max_size=100, limiter=None, **kwargs):
  """A table over a fresh store holding chunk 1: ten steps of a 3-vector (value = step)."""
  store = ChunkStore()
  store.put(1, np.repeat(np.arange(10, dtype=np.float32)[:, None], 3, axis=1))
  table = Table(
    name,
    sel.Fifo() if sampler is None else sampler,  # not `or`: an empty selector is falsy
    sel.Fifo() if remover is None else remover,
    max_size,
    rl.MinSize(1) if limiter is None else limiter,
    chunk_store=store,
    **kwargs,
  )
  return table, store


def step(i: int) -> dict:
  return {"obs": [(1, slice(i, i + 1))]}


def state(table: Table, store: ChunkStore) -> tuple:
  """Everything an error must leave as it was."""
  info = table.info()
  for stats in ("insert_stats", "sample_stats"):
    del info["rate_limiter"][stats]
  items = [(i["key"], i["priority"], i["times_sampled"]) for i in table.snapshot()["items"]]
  return info, items, store.info()


# Data.


def test_sampled_data_resolves_slices_across_chunks_and_squeezed_steps():
  store = ChunkStore()
  store.put(1, np.arange(12, dtype=np.float32).reshape(6, 2))
  store.put(2, np.arange(100, 112, dtype=np.float32).reshape(6, 2))
  store.put(3, np.arange(6, dtype=np.int32))
  table = Table("t", sel.Uniform(seed=0), sel.Fifo(), 10, rl.MinSize(1), chunk_store=store)
  table.insert(
    7,
    2.5,
    {
      "obs": [(1, slice(4, None)), (2, slice(0, 3))],
      "reward": [(3, -1)],
      "one": [(2, slice(5, 6))],
    },
    timeout=0,
  )
  [item] = table.sample(1, timeout=0)
  key, data, probability, table_size, priority, times_sampled, structure = item  # a tuple
  assert (key, probability, table_size, priority, times_sampled) == (7, 1.0, 1, 2.5, 1)
  assert structure is None  # inserted without one: the data is the flat dict of columns
  np.testing.assert_array_equal(data["obs"], [[8, 9], [10, 11], [100, 101], [102, 103], [104, 105]])
  assert data["reward"].shape == () and data["reward"] == 5 and data["reward"].dtype == np.int32
  np.testing.assert_array_equal(data["one"], [[110, 111]])
  with pytest.raises(ValueError, match="read-only"):
    data["one"][0, 0] = 0  # a view of the shared chunk, which nobody may change
  assert np.shares_memory(data["one"], store.get(2))
  assert table.sample(1, timeout=0)[0].times_sampled == 2


def test_chunk_store_put_copies_unless_told_not_to():
  store = ChunkStore()
  source = np.zeros(3)
  store.put(1, source)
  source[0] = 5
  assert store.get(1)[0] == 0
  store.put(2, source, copy=False)
  assert store.get(2) is source and not source.flags.writeable
  store.put(1, np.zeros(3))  # same key again: one more reference, data kept
  assert store.refcount(1) == 2
  with pytest.raises(ValueError, match="already stored"):
    store.put(1, np.zeros(4))
  with pytest.raises(ValueError, match="at least one step"):
    store.put(3, np.float32(1.0))
  with pytest.raises(KeyError):
    store.release([1, 99])  # all or nothing
  assert store.refcount(1) == 2


def test_data_is_stored_once_and_released_with_the_last_reference():
  store = ChunkStore()
  chunk = np.ones((1000, 64))  # 512 KB
  store.put(5, chunk, copy=False)
  stored = weakref.ref(store.get(5))
  del chunk
  a = Table("a", sel.Uniform(seed=1), sel.Fifo(), 40, rl.MinSize(1), chunk_store=store)
  b = Table("b", sel.Fifo(), sel.Fifo(), 100, rl.MinSize(1), chunk_store=store, max_times_sampled=1)
  for i in range(50):  # 10 of them evicted from a
    a.insert(
      i, 1.0, {"x": [(5, slice(i, i + 20))], "y": [(5, i)]}, timeout=0
    )  # one reference per item
  for i in range(20):
    b.insert(i, 1.0, {"x": [(5, slice(i, i + 2))]}, timeout=0)
  assert len(store) == 1 and store.nbytes == 512_000, "stored once however many items refer to it"
  assert store.refcount(5) == 1 + 40 + 20
  store.release([5])  # the writer is done with it
  a.mutate_priorities(deletes=range(10, 20))
  assert store.refcount(5) == 30 + 20
  b.sample(20, timeout=0)  # max_times_sampled=1 removes all of b
  assert len(b) == 0 and store.refcount(5) == 30
  for i in range(20, 30):
    a.mutate_priorities(deletes=[i])
  a.insert(100, 1.0, {"x": [(5, slice(0, 1))]}, timeout=0)
  assert store.refcount(5) == 21
  a.reset()
  assert len(store) == 0 and store.nbytes == 0 and store.refcount(5) == 0
  gc.collect()
  assert stored() is None, "the chunk's memory must be freed"


# Queue, stack and removal.


def test_queue_returns_items_in_order_once_and_blocks_when_full_or_empty():
  queue = Table.queue("q", 3)
  queue.chunk_store.put(1, np.arange(10))
  for key in (30, 10, 20):
    queue.insert(key, 0.0, {"x": [(1, key // 10)]}, timeout=0)
  with pytest.raises(RateLimiterTimeoutError, match=r"'q'.*an insert"):
    queue.insert(40, 0.0, {"x": [(1, 4)]}, timeout=0)
  assert [queue.sample(timeout=0)[0].key for _ in range(2)] == [30, 10]
  queue.insert(40, 0.0, {"x": [(1, 4)]}, timeout=0)
  batch = queue.sample(5, timeout=0)
  assert [item.key for item in batch] == [20, 40] and [int(i.data["x"]) for i in batch] == [2, 4]
  assert all(item.times_sampled == 1 for item in batch)
  with pytest.raises(RateLimiterTimeoutError, match="a sample"):
    queue.sample(timeout=0)
  assert len(queue) == 0 and queue.info()["num_expired"] == 4
  queue.chunk_store.release([1])
  assert len(queue.chunk_store) == 0


def test_stack_returns_the_newest_item_first():
  stack = Table.stack("s", 3)
  stack.chunk_store.put(1, np.arange(10))
  for key in (1, 2, 3):
    stack.insert(key, 0.0, {"x": [(1, key)]}, timeout=0)
  assert stack.sample(timeout=0)[0].key == 3
  stack.insert(4, 0.0, {"x": [(1, 4)]}, timeout=0)
  assert [item.key for item in stack.sample(3, timeout=0)] == [4, 2, 1]
  assert len(stack) == 0


def test_items_are_removed_after_max_times_sampled():
  table, store = table_with_chunk(max_times_sampled=3)
  table.insert(1, 1.0, step(0), timeout=0)
  table.insert(2, 1.0, step(1), timeout=0)
  assert [item.times_sampled for item in table.sample(3, timeout=0)] == [
    1,
    2,
    3,
  ]  # Fifo: item 1 thrice
  assert len(table) == 1 and store.refcount(1) == 2  # the test's reference and item 2's
  assert [(i.key, i.times_sampled) for i in table.sample(1, timeout=0)] == [(2, 1)]
  assert table.info()["num_expired"] == 1


@pytest.mark.parametrize(
  ("remover", "priorities", "new_priority", "evicted"),
  [
    (sel.Fifo(), [3.0, 1.0, 2.0], 2.5, 1),  # the oldest
    (sel.Lifo(), [3.0, 1.0, 2.0], 2.5, 4),  # the newest: the item just inserted (as in Reverb)
    (sel.MinHeap(), [3.0, 1.0, 2.0], 2.5, 2),  # the lowest priority
    (sel.MaxHeap(), [3.0, 1.0, 2.0], 2.5, 1),  # the highest priority
    (sel.Prioritized(1.0, seed=3), [0.0, 0.0, 5.0], 0.0, 3),  # the only one with weight
  ],
)
def test_max_size_evicts_with_the_remover(remover, priorities, new_priority, evicted):
  table, store = table_with_chunk(remover=remover, max_size=3)
  for key, priority in enumerate(priorities, start=1):
    table.insert(key, priority, step(key), timeout=0)
  table.insert(4, new_priority, step(4), timeout=0)
  keys = {item["key"] for item in table.snapshot()["items"]}
  assert keys == {1, 2, 3, 4} - {evicted}
  assert store.refcount(1) == 1 + 3 and table.info()["num_evictions"] == 1


def test_uniform_remover_evicts_one_of_the_items():
  table, store = table_with_chunk(remover=sel.Uniform(seed=4), max_size=5)
  for key in range(40):
    table.insert(key, 1.0, step(key % 10), timeout=0)
  keys = {item["key"] for item in table.snapshot()["items"]}
  assert len(keys) == 5 and keys != set(range(35, 40)), "not simply the newest"
  assert table.info()["num_evictions"] == 35 and store.refcount(1) == 6


# Errors change nothing.


SIGNATURE = {"obs": (np.float32, (None, 3)), "reward": ("float32", ())}


def signature_table():
  table, store = table_with_chunk(signature=SIGNATURE)
  store.put(2, np.arange(10, dtype=np.float32))
  store.put(3, np.arange(10, dtype=np.float64))
  table.insert(1, 1.0, {"obs": [(1, slice(0, 4))], "reward": [(2, 3)]}, timeout=0)
  return table, store


@pytest.mark.parametrize(
  ("data", "message"),
  [
    (
      {"obs": [(1, slice(0, 4))], "reward": [(3, 3)]},
      "column 'reward' does not match the signature: "
      "expected dtype float32 and shape (), got dtype float64 and shape ()",
    ),
    (
      {"obs": [(1, 2)], "reward": [(2, 3)]},
      "column 'obs' does not match the signature: "
      "expected dtype float32 and shape (None, 3), got dtype float32 and shape (3,)",
    ),
    (
      {"obs": [(1, slice(0, 4))], "reward": [(2, slice(3, 4))]},
      "column 'reward' does not match the signature: "
      "expected dtype float32 and shape (), got dtype float32 and shape (1,)",
    ),
    ({"obs": [(1, slice(0, 4))]}, "no column 'reward', which the signature requires"),
    (
      {"obs": [(1, slice(0, 4))], "reward": [(2, 3)], "extra": [(2, 1)]},
      "column 'extra' is not in the table's signature",
    ),
  ],
)
def test_signature_mismatches_raise_and_change_nothing(data, message):
  table, store = signature_table()
  before = state(table, store)
  with pytest.raises(ValueError, match=re.escape(message)) as caught:
    table.insert(2, 1.0, data, timeout=0)
  assert "table 't'" in str(caught.value)
  assert state(table, store) == before
  assert table.info()["signature"] == {"obs": ("<f4", [None, 3]), "reward": ("<f4", [])}


@pytest.mark.parametrize(
  ("data", "message"),
  [
    ({}, "non-empty mapping"),
    ([(1, slice(0, 1))], "non-empty mapping"),
    ({"obs": (1, slice(0, 1))}, "list of"),
    ({"obs": []}, "references no data"),
    ({"obs": [(9, slice(0, 1))]}, "chunk 9, which is not stored"),
    ({"obs": [(1, slice(5, 11))]}, "outside chunk 1 of 10 steps"),
    ({"obs": [(1, slice(5, 5))]}, "selects no steps"),
    ({"obs": [(1, slice(0, 6, 2))]}, "no step"),
    ({"obs": [(1, 10)]}, "index 10 is outside"),
    ({"obs": [(1, 2), (1, 3)]}, "only reference"),
    ({"obs": [(1, slice(0, 2)), (2, slice(0, 2))]}, "different dtype or step shape"),
    ({"obs": [(1, "all")]}, "slice or an index"),
    ({"obs": [(-1, 0)]}, "chunk key must be in"),
  ],
)
def test_bad_data_references_raise_and_change_nothing(data, message):
  table, store = table_with_chunk()
  store.put(2, np.arange(10, dtype=np.float32))
  table.insert(1, 1.0, step(0), timeout=0)
  before = state(table, store)
  with pytest.raises(ValueError, match=message):
    table.insert(2, 1.0, data, timeout=0)
  assert state(table, store) == before


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf, "2", None])
def test_bad_priorities_raise_and_change_nothing(bad):
  table, store = table_with_chunk(sampler=sel.Prioritized(1.0, seed=0))
  table.insert(1, 1.0, step(0), timeout=0)
  table.insert(2, 3.0, step(1), timeout=0)
  before = state(table, store)
  with pytest.raises(ValueError, match=r"table 't'.*priority"):
    table.insert(3, bad, step(2), timeout=0)
  with pytest.raises(ValueError, match="item 2: priority"):
    table.mutate_priorities(
      {1: 10.0, 2: bad}, deletes=[1]
    )  # the good update and delete are not applied either
  assert state(table, store) == before
  assert table._sampler.probability(1) == 0.25


def test_bad_keys_and_arguments():
  table, _ = table_with_chunk()
  for key in (-1, 2**64, 1.5, "1", True):
    with pytest.raises(ValueError, match="item key"):
      table.insert(key, 1.0, step(0), timeout=0)
  table.insert(2**64 - 1, 1.0, step(0), timeout=0)
  assert table.sample(timeout=0)[0].key == 2**64 - 1
  for bad in (0, -2, 1.0):
    with pytest.raises(ValueError, match="num_samples"):
      table.sample(bad, timeout=0)
  with pytest.raises(ValueError, match="timeout"):
    table.sample(1, timeout=-1)


def test_construction_errors():
  fifo = sel.Fifo()
  with pytest.raises(ValueError, match="name"):
    Table("", sel.Fifo(), sel.Fifo(), 1, rl.MinSize(1))
  with pytest.raises(ValueError, match="max_size"):
    Table("t", sel.Fifo(), sel.Fifo(), 0, rl.MinSize(1))
  with pytest.raises(ValueError, match="two selector objects"):
    Table("t", fifo, fifo, 1, rl.MinSize(1))
  with pytest.raises(TypeError, match="rate_limiter"):
    Table("t", sel.Fifo(), sel.Fifo(), 1, None)
  with pytest.raises(ValueError, match=r"signature column 'x': expected \(dtype, shape\)"):
    Table("t", sel.Fifo(), sel.Fifo(), 1, rl.MinSize(1), signature={"x": np.float32})
  limiter = rl.MinSize(1)
  with pytest.raises(ValueError, match="max_size"):
    Table("t", sel.Fifo(), sel.Fifo(), -1, limiter)
  Table("t", sel.Fifo(), sel.Fifo(), 1, limiter)  # a failed construction left the limiter free


# Updates, deletes, reset.


def test_inserting_a_present_key_updates_its_priority_only():
  table, store = table_with_chunk(sampler=sel.MaxHeap())
  table.insert(1, 1.0, step(1), timeout=0)
  table.insert(2, 2.0, step(2), timeout=0)
  table.insert(1, 5.0, step(7), timeout=0)  # as in Reverb: an update, the data stays
  [item] = table.sample(timeout=0)
  assert (item.key, item.priority, float(item.data["obs"][0, 0])) == (1, 5.0, 1.0)
  info = table.info()
  assert (
    info["size"],
    info["num_inserts"],
    info["num_updates"],
    info["rate_limiter"]["inserts"],
  ) == (2, 2, 1, 2)
  assert store.refcount(1) == 3


def test_mutate_priorities_updates_deletes_and_ignores_missing_keys():
  table, store = table_with_chunk(sampler=sel.MaxHeap(), remover=sel.MinHeap())
  for key in range(5):
    table.insert(key, float(key), step(key), timeout=0)
  table.mutate_priorities({0: 10.0, 3: 0.5, 99: 1.0}, deletes=[4, 98])
  assert table.sample(timeout=0)[0].key == 0
  table.mutate_priorities(deletes=[0])
  assert table.sample(timeout=0)[0].key == 2
  info = table.info()
  assert (info["size"], info["num_deletes"], info["num_updates"]) == (3, 2, 2)
  assert info["rate_limiter"]["deletes"] == 2 and store.refcount(1) == 4
  table.insert(5, 0.1, step(5), timeout=0)
  assert [i["key"] for i in table.snapshot()["items"]] == [1, 2, 3, 5]


def test_reset_empties_the_table_and_the_limiter():
  table, store = table_with_chunk(limiter=rl.SampleToInsertRatio(1.0, 2, 4.0))
  for key in range(4):
    table.insert(key, 1.0, step(key), timeout=0)
  table.sample(2, timeout=0)
  table.reset()
  info = table.info()
  assert info["size"] == 0 and info["num_resets"] == 1
  assert (info["rate_limiter"]["inserts"], info["rate_limiter"]["samples"]) == (0, 0)
  assert store.refcount(1) == 1 and not table.can_sample()
  table.insert(9, 1.0, step(9), timeout=0)
  assert len(table) == 1


def test_sample_returns_what_the_limiter_allows_now():
  # Window [0, 4] at one sample per insert: after 3 inserts, 3 samples are allowed.
  table, _ = table_with_chunk(
    sampler=sel.Uniform(seed=0), limiter=rl.SampleToInsertRatio(1.0, 2, (0.0, 4.0))
  )
  for key in range(3):
    table.insert(key, 1.0, step(key), timeout=0)
  assert table.can_sample(3) and not table.can_sample(4)
  assert len(table.sample(10, timeout=0)) == 3
  with pytest.raises(RateLimiterTimeoutError):
    table.sample(1, timeout=0)


def test_info_reports_configuration_and_counters():
  table, _ = table_with_chunk(sampler=sel.Prioritized(0.6), max_times_sampled=2)
  table.insert(1, 1.0, step(1), timeout=0)
  table.sample(2, timeout=0)
  info = table.info()
  assert info["sampler"] == {"type": "Prioritized", "priority_exponent": 0.6}
  assert info["remover"] == {"type": "Fifo"} and info["max_times_sampled"] == 2
  assert (info["num_inserts"], info["num_samples"], info["num_expired"], info["size"]) == (
    1,
    2,
    1,
    0,
  )
  assert info["rate_limiter"]["type"] == "MinSize" and info["rate_limiter"]["samples"] == 2


# Snapshots.


def build_busy_table(store: ChunkStore) -> Table:
  store.put(1, np.arange(40, dtype=np.float32).reshape(20, 2))
  store.put(2, np.arange(100, 140, dtype=np.float32).reshape(20, 2))
  table = Table(
    "busy",
    sel.Prioritized(0.7, seed=5),
    sel.Fifo(),
    12,
    rl.SampleToInsertRatio(2.0, 3, 10.0),
    signature={"obs": (np.float32, (None, 2))},
    chunk_store=store,
  )
  for key in range(18):  # 6 evicted
    data = {"obs": [(1, slice(key, 20)), (2, slice(0, key % 3 + 1))]}
    table.insert(1000 + key, 1.0 + key % 4, data, timeout=0)
    if table.can_sample():
      table.sample(2, timeout=0)
  table.mutate_priorities({1010: 0.0, 1011: 7.5}, deletes=[1012])
  store.release([1, 2])
  return table


def test_snapshot_restore_round_trip():
  store = ChunkStore()
  table = build_busy_table(store)
  snapshot = pickle.loads(pickle.dumps(table.snapshot()))
  restored_store = ChunkStore()
  restored = Table.from_snapshot(snapshot, chunk_store=restored_store)
  original, copy = table.snapshot(), restored.snapshot()
  assert copy["items"] == original["items"], "keys, priorities, times_sampled, data refs, order"
  assert copy["rate_limiter"] == original["rate_limiter"] and copy["rate_limiter"]["samples"] > 0
  assert copy["stats"] == original["stats"] and copy["next_seq"] == original["next_seq"]
  assert set(restored_store.keys()) == {1, 2} and restored_store.nbytes == store.nbytes
  for item in original["items"]:
    np.testing.assert_array_equal(
      restored_store.resolve(item["data"])["obs"], store.resolve(item["data"])["obs"]
    )
    assert restored._sampler.probability(item["key"]) == pytest.approx(
      table._sampler.probability(item["key"])
    )
  # The limiter decides as it would have, and the FIFO order survived: new
  # inserts evict the oldest items, in the original order.
  keys = [item["key"] for item in original["items"]]
  new_keys = list(range(2000, 2005))
  for t, s in ((table, store), (restored, restored_store)):
    s.put(3, np.zeros((1, 2), np.float32))
    for key in new_keys:
      while not t.can_insert():
        t.sample(1, timeout=0)
      t.insert(key, 1.0, {"obs": [(3, slice(0, 1))]}, timeout=0)
  evicted = len(keys) + len(new_keys) - 12
  assert evicted > 0
  for t in (table, restored):
    assert [i["key"] for i in t.snapshot()["items"]] == keys[evicted:] + new_keys
  assert table.snapshot()["rate_limiter"] == restored.snapshot()["rate_limiter"]


def test_restore_keeps_the_heap_tie_order():
  table, _ = table_with_chunk(sampler=sel.MinHeap(), max_times_sampled=1)
  for key in range(6):
    table.insert(key, 1.0, step(key), timeout=0)
  table.mutate_priorities({0: 1.0, 3: 1.0})  # ties now go 1, 2, 4, 5, 0, 3
  other, _ = table_with_chunk(sampler=sel.MinHeap(), max_times_sampled=1)
  other.restore(table.snapshot())
  expected = [1, 2, 4, 5, 0, 3]
  assert [item.key for item in table.sample(6, timeout=0)] == expected
  assert [item.key for item in other.sample(6, timeout=0)] == expected


def test_restore_replaces_contents_and_releases_old_chunks():
  source, _ = table_with_chunk()
  source.insert(1, 2.0, step(3), timeout=0)
  target = Table("target", sel.Fifo(), sel.Fifo(), 10, rl.MinSize(1))
  target.chunk_store.put(77, np.zeros(5))
  target.insert(5, 1.0, {"x": [(77, slice(0, 5))]}, timeout=0)
  target.chunk_store.release([77])
  target.restore(source.snapshot())
  assert [i["key"] for i in target.snapshot()["items"]] == [1]
  assert 77 not in target.chunk_store and target.chunk_store.refcount(1) == 1
  assert float(target.sample(timeout=0)[0].data["obs"][0, 0]) == 3.0


@pytest.mark.parametrize(
  ("corrupt", "message"),
  [
    (lambda s: s["items"][0].update(priority=-1.0), "priority"),
    (lambda s: s["items"][0].update(times_sampled=-1), "times_sampled"),
    (lambda s: s["chunks"].pop(1), "not stored"),
    (lambda s: s["items"].append(dict(s["items"][0])), "appears twice"),
    (lambda s: s["items"].extend(dict(s["items"][0], key=100 + i) for i in range(20)), "max_size"),
    (lambda s: s["rate_limiter"].update(inserts="many"), "malformed"),
    (lambda s: s.update(version=99), "version"),
  ],
)
def test_a_bad_snapshot_raises_and_changes_nothing(corrupt, message):
  source, _ = table_with_chunk()
  source.insert(1, 2.0, step(3), timeout=0)
  snapshot = source.snapshot()
  corrupt(snapshot)
  target, store = table_with_chunk(max_size=10)
  target.insert(5, 1.0, step(5), timeout=0)
  before = state(target, store)
  with pytest.raises(ValueError, match=message):
    target.restore(snapshot)
  assert state(target, store) == before


def test_restore_checks_the_signature():
  source, _ = table_with_chunk()
  source.insert(1, 2.0, step(3), timeout=0)
  target, store = table_with_chunk(signature={"obs": (np.float64, (1, 3))})
  with pytest.raises(ValueError, match="column 'obs' does not match the signature"):
    target.restore(source.snapshot())
  assert len(target) == 0 and store.refcount(1) == 1


# Batches: insert_many.


def put_rows(store: ChunkStore, key: int, count: int) -> int:
  """Stores chunk `key`: `count` rows, row i a 3-vector of i + 100 (not ChunkStore's chunk 1)."""
  store.put(key, np.repeat(np.arange(100, 100 + count, dtype=np.float32)[:, None], 3, axis=1))
  return key


def test_insert_many_items_are_rows_of_the_chunks_in_order():
  table, store = table_with_chunk(max_times_sampled=1)
  put_rows(store, 5, 10)
  store.put(2, np.arange(10, dtype=np.int64))
  table.insert_many(list(range(100, 110)), 1.5, {"obs": 5, "step": 2}, timeout=0)
  assert store.refcount(5) == store.refcount(2) == 1 + 10  # one reference per item
  store.release([1, 5, 2])
  items = table.sample(10, timeout=0)  # Fifo: in order
  assert [item.key for item in items] == list(range(100, 110))
  for row, item in enumerate(items):
    assert item.data["obs"].shape == (3,) and item.data["obs"][0] == 100 + row  # no step axis
    assert item.data["step"] == row and item.priority == 1.5
  assert table.info()["num_inserts"] == 10
  table.reset()
  assert len(store) == 0


@pytest.mark.parametrize(
  "remover", [sel.Fifo(), sel.Lifo(), sel.MinHeap(), sel.MaxHeap()], ids=lambda s: repr(s)
)
def test_insert_many_does_what_inserts_one_at_a_time_do(remover):
  """Same items, priorities, evictions and limiter counters, into a table that overflows."""
  one, store_one = table_with_chunk(remover=remover, max_size=4, limiter=rl.Queue(20))
  many, store_many = table_with_chunk(remover=type(remover)(), max_size=4, limiter=rl.Queue(20))
  priorities = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
  for table in (one, many):
    table.insert(1, 2.5, step(0), timeout=0)
    table.sample(timeout=0)
  for key, priority in enumerate(priorities, start=10):
    one.insert(key, priority, {"obs": [(1, key - 10)]}, timeout=0)  # also one row each
  many.insert_many(list(range(10, 18)), priorities, {"obs": put_rows(store_many, 2, 8)}, timeout=0)
  store_many.release([2])

  def contents(table):
    items = [(i["key"], i["priority"]) for i in table.snapshot()["items"]]
    info = table.info()
    return items, info["num_evictions"], info["rate_limiter"]["diff"], info["num_inserts"]

  assert contents(many) == contents(one)
  assert store_one.refcount(1) == store_many.refcount(1) + store_many.refcount(2) == 1 + 4


def test_insert_many_waits_for_the_limiter_item_by_item():
  table, store = table_with_chunk(limiter=rl.Queue(3), max_size=10, max_times_sampled=1)
  inserter = threading.Thread(
    target=table.insert_many,
    args=(list(range(6)), 1.0, {"obs": put_rows(store, 2, 6)}),
    kwargs={"timeout": 10},
  )
  inserter.start()
  taken = []
  while len(taken) < 6:  # each sample lets one more item in
    taken += [item.key for item in table.sample(timeout=10)]
  inserter.join(10)
  assert not inserter.is_alive() and taken == list(range(6))
  assert table.info()["rate_limiter"]["insert_stats"]["limited"] >= 1


def test_insert_many_timing_out_part_way_leaves_the_first_items_in():
  table, store = table_with_chunk(limiter=rl.Queue(3), max_size=10, max_times_sampled=1)
  with pytest.raises(RateLimiterTimeoutError) as raised:
    table.insert_many(list(range(5)), 1.0, {"obs": put_rows(store, 2, 5)}, timeout=0.05)
  assert "table 't': 3 of the batch's 5 items were inserted" in raised.value.__notes__
  assert [item.key for item in table.sample(3, timeout=0)] == [0, 1, 2]
  assert store.refcount(2) == 1  # the sampled items went; no reference is left behind


def test_insert_many_of_a_present_key_updates_its_priority_only():
  table, store = table_with_chunk(sampler=sel.MaxHeap())
  table.insert(5, 1.0, step(9), timeout=0)
  table.insert_many([4, 5, 6], [2.0, 7.0, 3.0], {"obs": put_rows(store, 2, 3)}, timeout=0)
  [item] = table.sample(timeout=0)
  assert (item.key, item.priority, float(item.data["obs"][0, 0])) == (5, 7.0, 9.0)
  info = table.info()
  assert (info["size"], info["num_inserts"], info["num_updates"]) == (3, 3, 1)


@pytest.mark.parametrize(
  ("keys", "priorities", "columns", "message"),
  [
    ([1, 1], 1.0, {"obs": 2}, "not distinct"),
    ([1, -2], 1.0, {"obs": 2}, "item key must be in"),
    ([1, 2], [1.0], {"obs": 2}, "2 items but 1 priorities"),
    ([1, 2], [1.0, math.nan], {"obs": 2}, "item 1 of the batch: priority must be finite"),
    ([1, 2], [1.0, True], {"obs": 2}, "item 1 of the batch: priority must be a real number"),
    ([1, 2], "1.0", {"obs": 2}, "priority must be a real number"),
    ([1, 2], 1.0, {"obs": 9}, "references chunk 9, which is not stored"),
    ([1, 2], 1.0, {"obs": 1}, "has 10 rows, not one per item of the batch (2)"),
    ([1, 2], 1.0, {}, "non-empty mapping column -> chunk key"),
    ([1, 2], 1.0, {3: 2}, "column names must be strings"),
  ],
)
def test_bad_batches_raise_and_change_nothing(keys, priorities, columns, message):
  table, store = table_with_chunk()  # chunk 1 has ten rows
  store.put(2, np.zeros((2, 3), np.float32))  # chunk 2 has two: one per item of the batch
  table.insert(7, 1.0, step(0), timeout=0)
  before = state(table, store)
  with pytest.raises(ValueError, match=re.escape(message)):
    table.insert_many(keys, priorities, columns, timeout=0)
  assert state(table, store) == before


def test_insert_many_checks_the_signature_and_the_structure_once():
  table, store = signature_table()
  store.put(4, np.zeros((2, 3), np.float32))
  store.put(5, np.zeros(2, np.float32))
  before = state(table, store)
  with pytest.raises(ValueError, match="column 'obs' does not match the signature"):
    table.insert_many([1, 2], 1.0, {"obs": 4, "reward": 5}, timeout=0)  # rows (3,), not (n, 3)
  assert state(table, store) == before
  plain, store = table_with_chunk()
  put_rows(store, 2, 2)
  before = state(plain, store)
  with pytest.raises(ValueError, match="structure's paths \\('x'\\) are not the item's columns"):
    plain.insert_many([1, 2], 1.0, {"obs": 2}, structure=("dict", ("x",), ((),), ""))
  assert state(plain, store) == before


@pytest.mark.parametrize("role", ["sampler", "remover"])
def test_a_weight_that_overflows_changes_nothing(role):
  """1e200 ** 3 overflows a Prioritized selector's float weight, after the table's checks."""
  selector = {role: sel.Prioritized(3.0)}
  table, store = table_with_chunk(**selector)
  put_rows(store, 2, 2)
  table.insert(7, 1.0, step(0), timeout=0)
  before = state(table, store)
  with pytest.raises(ValueError, match=f"table 't': {role}: priority 1e\\+200 .* overflows"):
    table.insert(8, 1e200, step(1), timeout=0)
  with pytest.raises(ValueError, match="overflows"):
    table.insert_many([8, 9], [1.0, 1e200], {"obs": 2}, timeout=0)
  assert state(table, store) == before
  table.insert_many([8, 9], [1.0, 2.0], {"obs": 2}, timeout=0)  # the selectors are consistent
  assert len(table) == 3 and len(table.sample(3, timeout=0)) == 3

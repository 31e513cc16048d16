"""Sampling is a transaction: a call that fails, or asks for too much, changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from child_process import Child

from launchpad import replay
from launchpad.replay import ChunkStore, Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay.table import MAX_SAMPLES_PER_CALL

TIMEOUT = 10.0  # bound on every wait


def table_of(
  n: int, sampler=None, remover=None, max_size=100, **kwargs
) -> tuple[Table, ChunkStore]:
  """A table of items 0..n-1 (priority i % 3), item i row i of one chunk."""
  store = ChunkStore()
  store.put(1, np.arange(max(n, 1), dtype=np.float32))
  table = Table(
    "t",
    sel.Fifo() if sampler is None else sampler,
    sel.Fifo() if remover is None else remover,
    max_size,
    rl.MinSize(1),
    chunk_store=store,
    **kwargs,
  )
  for i in range(n):
    table.insert(i, float(i % 3), {"x": [(1, i)]}, timeout=0)
  return table, store


def state(table: Table, store: ChunkStore) -> tuple:
  """What a failed call must leave as it was: counts, limiter, items in order, references."""
  info = dict(table.info())
  limiter = dict(info.pop("rate_limiter"))
  del limiter["insert_stats"], limiter["sample_stats"]  # these record calls, failed ones too
  items = [(i["key"], i["priority"], i["times_sampled"]) for i in table.snapshot()["items"]]
  return info, limiter, items, store.info()


def drain(table: Table) -> list[int]:
  """The keys the sampler gives, one by one, until the table is empty (max_times_sampled=1)."""
  return [table.sample(timeout=0)[0].key for _ in range(len(table))]


class Failure(Exception):
  pass


@pytest.mark.parametrize(
  "sampler",
  [sel.Fifo, sel.Lifo, sel.MaxHeap, sel.MinHeap, lambda: sel.Prioritized(1.0, seed=3)],
  ids=["fifo", "lifo", "max_heap", "min_heap", "prioritized"],
)
def test_a_transaction_that_raises_undoes_its_samples_and_the_items_come_back_in_place(sampler):
  table, store = table_of(6, sampler=sampler(), max_times_sampled=1)
  table.mutate_priorities({4: 2.0})  # a tie with item 2 that heaps break by update order
  before = state(table, store)
  with pytest.raises(Failure), table.sampling() as sampling:
    taken = sampling.sample(3, timeout=0) + sampling.sample(2, timeout=0)
    assert len(taken) == 5 and len(table) == 1  # they left the table at once
    raise Failure
  assert state(table, store) == before
  if sampler().is_deterministic:  # the same order as if nothing had happened
    reference, _ = table_of(6, sampler=sampler(), max_times_sampled=1)
    reference.mutate_priorities({4: 2.0})
    assert drain(table) == drain(reference)


def test_a_transaction_that_ends_normally_counts_every_sample():
  table, store = table_of(4, max_times_sampled=2)
  with table.sampling() as sampling:
    assert [i.key for i in sampling.sample(2, timeout=0)] == [0, 0]
    assert [i.key for i in sampling.sample(1, timeout=0)] == [1]
  info = table.info()
  assert (info["size"], info["num_samples"], info["num_expired"]) == (3, 3, 1)
  assert store.refcount(1) == 1 + 3  # item 0 dropped its reference when the call committed


def test_undoing_after_inserts_filled_the_places_keeps_the_table_within_max_size():
  table, store = table_of(2, max_size=2, max_times_sampled=1)
  with pytest.raises(Failure), table.sampling() as sampling:
    sampling.sample(1, timeout=0)  # item 0 leaves
    table.insert(7, 1.0, {"x": [(1, 0)]}, timeout=0)  # another caller takes its place
    raise Failure
  # Item 0 came back, and the remover (FIFO) evicted it again: the insert stands.
  info = table.info()
  assert (info["size"], info["num_evictions"], info["num_expired"], info["num_samples"]) == (
    2,
    1,
    0,
    0,
  )
  limiter = info["rate_limiter"]
  assert limiter["inserts"] - limiter["deletes"] == 2 and limiter["samples"] == 0
  assert drain(table) == [1, 7] and store.refcount(1) == 1


def test_a_reset_during_a_transaction_makes_its_undo_moot():
  table, store = table_of(3, max_times_sampled=1)
  with pytest.raises(Failure), table.sampling() as sampling:
    sampling.sample(2, timeout=0)
    table.reset()
    raise Failure
  info = table.info()
  assert (info["size"], info["rate_limiter"]["samples"], info["rate_limiter"]["deletes"]) == (
    0,
    0,
    0,
  )
  assert store.refcount(1) == 1  # the items that left released their chunk all the same


@pytest.mark.parametrize("too_many", [MAX_SAMPLES_PER_CALL + 1, 3_000_000])
def test_a_request_for_too_many_samples_is_refused_before_anything_changes(too_many):
  table, store = table_of(5)
  before = state(table, store)
  message = (
    rf"table 't': num_samples={too_many} is more than one call may ask for "
    rf"\(at most {MAX_SAMPLES_PER_CALL}.*call sample\(\) or sample_batch\(\) repeatedly"
  )
  with pytest.raises(ValueError, match=message):
    table.sample(too_many, timeout=0)
  assert state(table, store) == before
  assert len(table.sample(MAX_SAMPLES_PER_CALL, timeout=0)) == MAX_SAMPLES_PER_CALL


# Through a server.


def server_state(client: replay.Client) -> dict:
  """server_info without the limiter's call statistics (which record failed calls too)."""
  result = {}
  for name, info in client.server_info().items():
    info = dict(info)
    limiter = dict(info.pop("rate_limiter"))
    del limiter["insert_stats"], limiter["sample_stats"]
    result[name] = (info, limiter)
  return result


def test_a_server_refuses_too_large_a_request_with_what_to_do():
  table = Table("t", sel.Uniform(seed=0), sel.Fifo(), 10, rl.MinSize(1))
  with replay.Server([table]) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    client.insert_batch([{"x": np.float32(i)} for i in range(4)], {"t": 1.0})
    before = client.server_info()
    for call in (client.sample, client.sample_batch):
      with pytest.raises(ValueError, match=r"table 't': num_samples=3000000 .*in chunks"):
        call("t", 3_000_000)
    assert client.server_info() == before  # call statistics included: no call got that far


def test_a_batch_whose_reply_cannot_be_built_leaves_the_queue_as_it_was():
  with replay.Server([Table.queue("q", 10)]) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    client.insert({"x": np.float32(0)}, {"q": 1.0})
    client.insert({"y": np.int64(1)}, {"q": 1.0})  # another structure
    before = server_state(client)
    with pytest.raises(ValueError, match="cannot be stacked; use sample"):
      client.sample_batch("q", 2)
    assert server_state(client) == before
    # Both are still queued, in order, never sampled.
    first, second = client.sample("q", 2)
    assert (first.data, second.data) == ({"x": 0.0}, {"y": 1})
    assert first.info.times_sampled == second.info.times_sampled == 1


# A server whose address space is bounded: sample_batch's stacking runs out of memory.
SERVER = """
import resource, sys
import psutil
from launchpad import replay
from launchpad.replay import Table, rate_limiters as rl, selectors as sel

server = replay.Server([Table("t", sel.Uniform(seed=0), sel.Fifo(), 100, rl.MinSize(1))])
limit = psutil.Process().memory_info().vms + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
print("serving", server.address, server.secret.hex(), flush=True)
sys.stdin.read()  # until the test closes stdin
server.stop()
"""
HEADROOM = 256 << 20  # bytes of address space the server may still take
ITEM = 1 << 20  # bytes per item: a batch of 1024 stacks 1 GiB


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the address space on Linux")
def test_a_call_that_runs_out_of_memory_on_the_server_changes_nothing():
  child = Child(
    [sys.executable, "-c", SERVER, str(HEADROOM)],
    timeout=60,
    stdin=subprocess.PIPE,
    env={**os.environ, "MALLOC_ARENA_MAX": "1"},  # few malloc arenas: address space for data
  )
  try:
    [match] = child.wait_for(re.compile(r"serving (\S+) (\S+)$"))
    client = replay.Client(match[1], secret=bytes.fromhex(match[2]), timeout=TIMEOUT)
    client.insert_batch([{"x": np.full(ITEM, i, np.uint8)} for i in range(8)], {"t": 1.0})
    before = server_state(client)
    with pytest.raises(MemoryError):
      client.sample_batch("t", 1024)  # 1024 draws of 8 items, stacked: 1 GiB
    assert server_state(client) == before
    batch = client.sample_batch("t", 8)  # the server lives on, its counts from zero
    assert batch.data["x"].shape == (8, ITEM)
    info = client.server_info()["t"]
    assert info["num_samples"] == info["rate_limiter"]["samples"] == 8
    assert batch.info.times_sampled.max() <= 8  # not ~128 each: the failed call's draws were undone
    client.close()
    child.process.stdin.close()
    assert child.finish() == 0, child.output()
  finally:
    child.kill()

"""TableInfo: server_info() under Reverb's attribute names, and as the dict it was."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from launchpad import replay
from launchpad.replay import Table, TableInfo
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay.chunk_store import new_key
from tests.replay import episode_calls

TIMEOUT = 10.0

# Reverb's TableInfo fields, in Reverb's order (tests/test_reverb_node.py checks
# them against dm-reverb's own where it is installed).
REVERB_FIELDS = [
  "name",
  "sampler_options",
  "remover_options",
  "max_size",
  "max_times_sampled",
  "rate_limiter_info",
  "signature",
  "current_size",
  "num_episodes",
  "num_deleted_episodes",
  "num_unique_samples",
  "table_worker_time",
]
# The keys server_info() had when it returned dicts.
DICT_KEYS = [
  "name",
  "size",
  "max_size",
  "max_times_sampled",
  "closed",
  "sampler",
  "remover",
  "signature",
  "num_inserts",
  "num_updates",
  "num_samples",
  "num_deletes",
  "num_evictions",
  "num_expired",
  "num_resets",
  "num_unique_samples",
  "rate_limiter",
]


@pytest.fixture
def client():
  table = Table(
    "t",
    sel.Prioritized(0.5, seed=1),
    sel.Fifo(),
    50,
    rl.MinSize(2),
    max_times_sampled=0,
    signature={"x": (np.float32, [3])},
  )
  with replay.Server([table, Table.queue("q", 5)]) as server:
    yield server.localhost_client(timeout=TIMEOUT)


def test_server_info_gives_table_infos_with_reverbs_names(client):
  client.insert_batch([{"x": np.full(3, i, np.float32)} for i in range(3)], {"t": 1.0})
  client.sample("t", 10)
  infos = client.server_info()
  assert set(infos) == {"t", "q"} and all(isinstance(i, TableInfo) for i in infos.values())
  info = infos["t"]
  assert (info.name, info.current_size, info.max_size, info.max_times_sampled) == ("t", 3, 50, 0)
  assert info.sampler_options == {"type": "Prioritized", "priority_exponent": 0.5}
  assert info.remover_options == {"type": "Fifo"}
  assert info.signature == {"x": ("<f4", [3])}
  assert info.rate_limiter_info["min_size_to_sample"] == 2
  assert info.rate_limiter_info["samples"] == info.num_samples == 10
  assert 1 <= info.num_unique_samples <= 3  # ten draws, with replacement, of three items
  assert [f for f in REVERB_FIELDS if not hasattr(info, f)] == []
  assert infos["q"].current_size == 0 and not infos["q"].closed


def test_a_table_info_is_also_the_dict_server_info_returned_before(client):
  client.insert({"x": np.zeros(3, np.float32)}, {"t": 1.0})
  info = client.server_info()["t"]
  assert list(info) == DICT_KEYS and len(info) == len(DICT_KEYS)
  old = dict(info)
  assert old["size"] == info.current_size == info["current_size"] == 1
  assert old["sampler"] is info.sampler_options and old["rate_limiter"] is info.rate_limiter_info
  assert info.get("num_inserts") == 1 and "size" in info and "current_size" in info
  assert info.get("num_episodes") == 1 and info.get("bogus") is None
  with pytest.raises(KeyError, match="TableInfo has no 'bogus': its keys are name, size"):
    info["bogus"]
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.current_size = 5
  assert pickle.loads(pickle.dumps(info)) == info


def test_unique_samples_count_items_sampled_since_the_last_reset():
  table = Table("t", sel.Fifo(), sel.Fifo(), 10, rl.MinSize(1))
  with replay.Server([table]) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    client.insert_batch([{"x": np.float32(i)} for i in range(4)], {"t": 1.0})
    client.sample("t", 5)  # FIFO without removal: the oldest item, five times
    info = client.server_info()["t"]
    assert (info.num_samples, info.num_unique_samples) == (5, 1)
    client.mutate_priorities("t", deletes=[int(client.sample("t")[0].info.key)])
    client.sample("t", 2)  # the next oldest, new
    assert client.server_info()["t"].num_unique_samples == 2
    client.reset("t")
    info = client.server_info()["t"]
    assert (info.num_unique_samples, info.num_samples, info.num_resets) == (0, 8, 1)


def test_table_info_in_process_is_the_same_object():
  table = Table.queue("q", 3)
  info = table.info()
  assert isinstance(info, TableInfo) and info.current_size == 0 and info["size"] == 0
  assert info.rate_limiter_info["type"] == "Queue"


def test_options_and_rate_limiter_info_read_by_attribute_under_reverbs_names(client):
  client.insert_batch([{"x": np.full(3, i, np.float32)} for i in range(3)], {"t": 1.0})
  client.sample("t", 4)
  info = client.server_info()["t"]
  limiter = info.rate_limiter_info
  assert (limiter.min_size_to_sample, limiter.samples_per_insert) == (2, 1.0)
  assert limiter.min_diff == limiter["min_diff"] and limiter.max_diff == limiter["max_diff"]
  assert limiter.min_diff < 0 < limiter.max_diff  # MinSize: no bound on the difference
  assert (limiter.inserts, limiter.samples) == (3, 4)
  assert (limiter.insert_stats.completed, limiter.sample_stats.completed) == (1, 1)  # calls
  assert limiter.sample_stats == limiter["sample_stats"] and isinstance(limiter, dict)
  sampler = info.sampler_options
  assert sampler.prioritized.priority_exponent == 0.5 and sampler.type == "Prioritized"
  assert not (sampler.fifo or sampler.uniform or sampler.lifo or sampler.is_deterministic)
  remover = info.remover_options
  assert remover.fifo and remover.is_deterministic and not remover.heap.min_heap
  assert remover.prioritized.priority_exponent == 0.0  # as an unset proto field reads
  with pytest.raises(AttributeError, match="has no 'bogus': its fields are type, samples_per"):
    _ = limiter.bogus
  assert pickle.loads(pickle.dumps(info)).rate_limiter_info.insert_stats.completed == 1


@pytest.mark.parametrize(
  ("selector", "flags"),
  [
    (sel.Fifo(), {"fifo"}),
    (sel.Lifo(), {"lifo"}),
    (sel.Uniform(), {"uniform"}),
    (sel.MinHeap(), {"min_heap"}),
    (sel.MaxHeap(), set()),
  ],
)
def test_each_selectors_options_read_as_reverbs(selector, flags):
  options = Table("t", selector, sel.Fifo(), 10, rl.MinSize(1)).info().sampler_options
  read = {"fifo": options.fifo, "lifo": options.lifo, "uniform": options.uniform}
  read["min_heap"] = options.heap.min_heap
  assert {name for name, value in read.items() if value} == flags
  assert options.is_deterministic == (not isinstance(selector, sel.Uniform))


def test_episodes_are_counted_as_reverb_counts_them():
  tables = [Table(name, sel.Fifo(), sel.Fifo(), size, rl.MinSize(1)) for name, size in SIZES]
  with replay.Server(tables) as server:
    assert (
      episode_calls.run(server.localhost_client(timeout=TIMEOUT)) == episode_calls.REVERB_COUNTS
    )


SIZES = [("t", 3), ("u", 100)]


def stored(table: Table, rows: int) -> int:
  """The key of a new chunk of `rows` steps in the table's store (the caller's reference)."""
  key = new_key()
  table.chunk_store.put(key, np.zeros((rows, 3), np.float32))
  return key


def write_episodes(table: Table, lengths: list[int]) -> None:
  """Inserts, for episode e of each length, that many items of episode id e + 1."""
  key = 0
  for episode, length in enumerate(lengths):
    for _ in range(length):
      key += 1
      chunk = stored(table, 1)
      table.insert(key, 1.0, {"x": [(chunk, 0)]}, TIMEOUT, episodes=[episode + 1])
      table.chunk_store.release([chunk])


def episodes(table: Table) -> tuple[int, int]:
  info = table.info()
  return info.num_episodes, info.num_deleted_episodes


def test_an_episode_is_deleted_when_its_last_item_leaves():
  table = Table.queue("q", 10)  # each item leaves when sampled
  write_episodes(table, [2, 1])
  assert episodes(table) == (2, 0)
  table.sample(1)
  assert episodes(table) == (2, 0)  # episode 1 has an item left
  table.sample(1)
  assert episodes(table) == (1, 1)
  table.sample(1)
  assert episodes(table) == (0, 2)


def test_an_undone_sample_brings_its_episodes_back():
  table = Table.queue("q", 10)
  write_episodes(table, [1, 1])
  with pytest.raises(RuntimeError, match="reply lost"), table.sampling() as sampling:
    sampling.sample(2)
    assert episodes(table) == (0, 2)
    raise RuntimeError("reply lost")
  assert episodes(table) == (2, 0) and table.info().current_size == 2


def test_a_snapshot_keeps_the_items_episodes():
  table = Table.queue("q", 10)
  write_episodes(table, [2, 3])
  table.insert_many([100, 101], 1.0, {"x": stored(table, 2)})
  table.sample(1)  # episode 1 keeps one item
  assert episodes(table) == (4, 0)  # episodes 1 and 2, and two items of their own
  snapshot = table.snapshot()
  assert episodes(Table.from_snapshot(snapshot)) == (4, 0)
  for entry in snapshot["items"]:  # as a snapshot taken before items had episodes
    del entry["episodes"]
  assert episodes(Table.from_snapshot(snapshot)) == (6, 0)  # each item an episode of its own


@pytest.mark.parametrize("bad", [[], ["one"], [-1], "12", 7])
def test_an_insert_with_bad_episode_ids_is_refused_naming_the_table(bad):
  table = Table.queue("q", 10)
  chunk = stored(table, 1)
  with pytest.raises(ValueError, match=r"table 'q': .*episode"):
    table.insert(1, 1.0, {"x": [(chunk, 0)]}, TIMEOUT, episodes=bad)
  assert table.info().current_size == 0


def test_table_worker_time_is_reverbs_all_zero(client):
  # A table here has no worker thread.
  worker_time = client.server_info()["t"].table_worker_time
  assert set(worker_time) == {
    "running_ms",
    "sampling_ms",
    "inserting_ms",
    "sleeping_ms",
    "waiting_for_sampling_ms",
    "waiting_for_inserts_ms",
  }
  assert worker_time.running_ms == 0 and not any(worker_time.values())

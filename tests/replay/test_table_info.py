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

TIMEOUT = 10.0

# Reverb's TableInfo fields that mean something here (num_episodes,
# num_deleted_episodes and table_worker_time do not).
REVERB_FIELDS = [
  "name",
  "sampler_options",
  "remover_options",
  "max_size",
  "max_times_sampled",
  "rate_limiter_info",
  "signature",
  "current_size",
  "num_unique_samples",
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
  assert info.get("num_episodes") is None
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

"""A writer's one-step items, inserted as runs (Table.insert_rows), over real sockets.

Each call here is the writer's own RPC (Client.insert_trajectories) with
items built by hand, so that a run can hold a bad item, a key twice, or more
items than the rate limiter lets in; what goes in and each error must be
what inserting the items one by one gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from launchpad import replay
from launchpad.replay import RateLimiterTimeoutError, Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

TIMEOUT = 10.0  # bound on every wait
WRITER = 7
CHUNK = 11
STEPS = 10


@pytest.fixture
def served():
  """A server with a uniform table "u" and a queue "q" of 5, and a client of it."""
  tables = [Table("u", sel.Uniform(seed=1), sel.Fifo(), 1000, rl.MinSize(1)), Table.queue("q", 5)]
  with replay.Server(tables) as server:
    client = replay.Client(server.address, secret=server.secret, timeout=TIMEOUT)
    yield server, client
    client.close()


def steps() -> np.ndarray:
  """STEPS steps of 3 float32 values, step t holding t."""
  return np.repeat(np.arange(STEPS, dtype=np.float32)[:, None], 3, axis=1)


def item(key: int, row: int, table: str = "u", priority: float = 1.0, episodes=(1,)) -> tuple:
  return (key, table, priority, {"obs": [(CHUNK, row)]}, None, episodes)


def call(client, items, timeout=TIMEOUT) -> dict:
  return client.insert_trajectories(WRITER, [(CHUNK, steps())], items, [], timeout)


def sampled(client, table: str, count: int) -> dict[int, tuple[float, float]]:
  """key -> (its step's value, its priority), sampling until `count` keys were seen."""
  seen: dict[int, tuple[float, float]] = {}
  for _ in range(100):
    for sample in client.sample(table, 50):
      seen[sample.info.key] = (float(sample.data["obs"][0]), sample.info.priority)
    if len(seen) == count:
      return seen
  pytest.fail(f"sampled {len(seen)} keys of {count}")


def test_one_step_items_come_back_as_their_steps_in_their_episodes(served):
  _, client = served
  items = [item(100 + t, t, episodes=(1 + t // 5,)) for t in range(STEPS)]
  reply = call(client, items)
  assert (reply["inserted"], reply["error"]) == (STEPS, None)
  assert sampled(client, "u", STEPS) == {100 + t: (float(t), 1.0) for t in range(STEPS)}
  info = client.server_info()["u"]
  assert (info.current_size, info.num_episodes) == (STEPS, 2)
  assert info.rate_limiter_info.insert_stats.completed == STEPS  # a call per item, as insert
  assert client.sample("u")[0].data["obs"].shape == (3,)  # one row: no step axis


def test_a_bad_item_in_a_run_is_rejected_and_the_items_before_it_stay(served):
  _, client = served
  items = [item(100 + t, t) for t in range(STEPS)]
  items[6] = item(106, 6, priority=-1.0)
  reply = call(client, items)
  assert (reply["inserted"], reply["rejected"]) == (6, 6)
  assert isinstance(reply["error"], ValueError) and "priority" in str(reply["error"])
  assert set(sampled(client, "u", 6)) == {100 + t for t in range(6)}


def test_a_row_outside_its_chunk_is_rejected_at_its_item(served):
  _, client = served
  items = [item(100 + t, t) for t in range(4)] + [item(104, STEPS)]
  reply = call(client, items)
  assert (reply["inserted"], reply["rejected"]) == (4, 4)
  assert isinstance(reply["error"], ValueError) and str(STEPS) in str(reply["error"])


def test_an_unknown_table_is_rejected_at_the_runs_first_item(served):
  _, client = served
  reply = call(client, [item(100 + t, t, table="nope") for t in range(3)])
  assert (reply["inserted"], reply["rejected"]) == (0, 0)
  assert "nope" in str(reply["error"])


def test_a_key_twice_in_a_call_only_updates_its_priority(served):
  _, client = served
  reply = call(client, [item(100, 0), item(101, 1), item(100, 2, priority=5.0)])
  assert (reply["inserted"], reply["error"]) == (3, None)
  assert sampled(client, "u", 2) == {100: (0.0, 5.0), 101: (1.0, 1.0)}


def test_a_run_goes_in_as_far_as_the_rate_limiter_allows(served):
  _, client = served
  reply = call(client, [item(100 + t, t, table="q") for t in range(8)], timeout=0.0)
  assert reply["inserted"] == 5 and reply["rejected"] is None
  assert isinstance(reply["error"], RateLimiterTimeoutError)
  assert client.server_info()["q"].current_size == 5


def test_a_call_sent_again_to_a_full_table_updates_priorities_without_waiting(served):
  _, client = served
  items = [item(100 + t, t, table="q") for t in range(5)]
  assert call(client, items)["inserted"] == 5  # the queue is full now
  again = call(client, [item(100 + t, t, table="q", priority=2.0) for t in range(5)], 0.0)
  assert (again["inserted"], again["error"]) == (5, None)
  fresh = call(client, [item(200, 0, table="q"), item(201, 1, table="q")], timeout=0.0)
  assert fresh["inserted"] == 0 and isinstance(fresh["error"], RateLimiterTimeoutError)

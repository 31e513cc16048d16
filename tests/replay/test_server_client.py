"""replay.Server and replay.Client over real sockets, in this process and from a child process."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from launchpad import errors, replay
from launchpad.courier.client import Client as CourierClient
from launchpad.replay import RateLimiterTimeoutError, Table, TableClosedError
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel
from launchpad.replay.client import ReplaySample
from launchpad.replay.structure import flatten
from launchpad.tls import TlsConfig

TIMEOUT = 10.0  # bound on every wait


def uniform(name="uniform", max_size=100, limiter=None, **kwargs) -> Table:
  return Table(name, sel.Uniform(seed=1), sel.Fifo(), max_size, limiter or rl.MinSize(1), **kwargs)


def prioritized(name="prioritized", max_size=100) -> Table:
  return Table(name, sel.Prioritized(1.0, seed=2), sel.Fifo(), max_size, rl.MinSize(1))


@pytest.fixture
def servers():
  """Starts replay servers; every one is stopped at teardown."""
  started = []

  def _start(tables, **kwargs):
    server = replay.Server(tables, **kwargs)
    started.append(server)
    return server, replay.Client(server.address, secret=server.secret, timeout=TIMEOUT)

  yield _start
  for server in started:
    server.stop()


def step(i: int) -> dict:
  return {"obs": np.full(3, i, dtype=np.float32), "reward": float(i)}


def sizes(client) -> dict[str, int]:
  return {name: info["size"] for name, info in client.server_info().items()}


def wait_until(predicate, what: str) -> None:
  """Polls an observable state until it holds, up to TIMEOUT."""
  deadline = time.monotonic() + TIMEOUT
  while not predicate():
    if time.monotonic() > deadline:
      pytest.fail(f"{what} did not happen within {TIMEOUT} s")
    threading.Event().wait(0.005)


# Round trips.


def test_insert_then_sample_returns_the_data_and_its_info(servers):
  _, client = servers([Table.queue("q", 10)])
  key = client.insert(step(7), priorities={"q": 2.5})
  [sample] = client.sample("q")
  assert isinstance(sample, ReplaySample)
  assert sample.info.key == key
  assert sample.info.probability == 1.0
  assert sample.info.table_size == 1
  assert sample.info.priority == 2.5
  assert sample.info.times_sampled == 1
  np.testing.assert_array_equal(sample.data["obs"], np.full(3, 7, dtype=np.float32))
  assert sample.data["obs"].dtype == np.float32
  assert sample.data["reward"].shape == () and sample.data["reward"] == 7.0
  assert sizes(client) == {"q": 0}  # a queue item goes once sampled


def test_nested_data_is_flattened_to_path_columns():
  data = {"obs": {"pos": np.zeros(2), "vel": [1, 2]}, "done": True}
  assert sorted(flatten(data)[0]) == ["done", "obs/pos", "obs/vel/0", "obs/vel/1"]
  assert list(flatten(np.ones(3))[0]) == ["data"]
  with pytest.raises(ValueError, match="dtype object"):
    flatten({"x": object()})


def test_batched_insert_and_sample_are_one_chunk_per_column_and_stack(servers):
  _, client = servers([Table.queue("q", 100)])
  keys = client.insert_batch([step(i) for i in range(20)], {"q": 1.0})
  assert len(keys) == len(set(keys)) == 20
  assert sizes(client) == {"q": 20}
  # One stacked chunk per column for the whole batch.
  assert client.chunk_store_info()["num_chunks"] == 2
  batch = client.sample_batch("q", 8)
  assert batch.data["obs"].shape == (8, 3)
  assert batch.data["reward"].shape == (8,)
  np.testing.assert_array_equal(batch.data["reward"], np.arange(8.0))  # FIFO
  np.testing.assert_array_equal(batch.info.key, np.array(keys[:8], dtype=np.uint64))
  assert batch.info.probability.shape == (8,)
  rest = client.sample("q", 12)
  assert [s.info.key for s in rest] == keys[8:]
  # Every item is gone, so is its data.
  assert client.chunk_store_info() == {"num_chunks": 0, "nbytes": 0, "num_references": 0}


def test_batches_of_strided_fortran_byte_swapped_and_string_arrays_round_trip(servers):
  _, client = servers([Table.queue("q", 100)])
  rng = np.random.default_rng(0)
  grid = rng.normal(size=(5, 6, 4))
  items = [
    {
      "strided": grid[i, :, ::2],  # not contiguous
      "fortran": np.asfortranarray(grid[i]),
      "big_endian": grid[i, 0].astype(">f4"),
      "text": np.array(["ab", str(i)]),
      "scalar": np.float32(i),
    }
    for i in range(5)
  ]
  client.insert_batch(items, {"q": 1.0})
  batch = client.sample_batch("q", 5)
  for column in items[0]:
    expected = np.stack([item[column] for item in items])
    np.testing.assert_array_equal(batch.data[column], expected)
    assert batch.data[column].dtype == expected.dtype


def test_batch_of_mixed_structures_and_per_item_priorities(servers):
  _, client = servers([uniform("a"), prioritized("b")])
  items = [step(0), step(1), {"other": np.zeros((2, 2))}, step(3)]
  priorities = [{"a": 1.0}, {"a": 1.0, "b": 2.0}, {"b": 3.0}, {"a": 1.0}]
  keys = client.insert_batch(items, priorities)
  assert len(keys) == 4
  assert sizes(client) == {"a": 3, "b": 2}
  with pytest.raises(ValueError, match="2 priority dicts"):
    client.insert_batch(items[:3], priorities[:2])


def test_data_sent_to_two_tables_is_stored_once(servers):
  server, client = servers([uniform("a"), prioritized("b")])
  obs = np.arange(1000, dtype=np.float64)
  client.insert({"obs": obs}, priorities={"a": 1.0, "b": 1.0})
  assert sizes(client) == {"a": 1, "b": 1}
  info = client.chunk_store_info()
  assert info["num_chunks"] == 1
  assert info["nbytes"] == obs.nbytes  # once, not twice
  assert info["num_references"] == 2  # one per table
  # The tables really share it: one store behind both.
  assert server.tables["a"].chunk_store is server.tables["b"].chunk_store is server.chunk_store
  client.reset("a")
  assert client.chunk_store_info()["num_chunks"] == 1  # table b still holds it
  client.reset("b")
  assert client.chunk_store_info()["num_chunks"] == 0


def test_tables_sharing_a_store_are_served_as_they_are_others_are_copied(servers):
  store = replay.ChunkStore()
  shared = [Table.queue("x", 5, chunk_store=store), Table.queue("y", 5, chunk_store=store)]
  server, _ = servers(shared)
  assert server.tables["x"] is shared[0] and server.chunk_store is store
  own, other = uniform("own"), prioritized("other")  # each with a store of its own
  server, client = servers([own, other])
  assert server.tables["own"] is not own
  client.insert(step(1), {"own": 1.0, "other": 1.0})
  assert len(own) == len(other) == 0  # the objects given are left alone
  # A single table shares a store with itself: it is served as it is.
  single = uniform("single")
  server, _ = servers([single])
  client = server.localhost_client(timeout=TIMEOUT)
  client.insert(step(1), {"single": 1.0})
  assert server.tables["single"] is single and len(single) == 1


# Priorities, reset, info.


def test_mutate_priorities_updates_and_deletes(servers):
  _, client = servers([prioritized("p")])
  keys = client.insert_batch([step(i) for i in range(5)], {"p": 1.0})
  client.mutate_priorities("p", updates={keys[2]: 0.0}, deletes=[keys[0]])
  client.mutate_priorities("p", updates={keys[3]: 0.0, keys[4]: 0.0})
  assert sizes(client) == {"p": 4}
  batch = client.sample_batch("p", 20)
  # Only keys[1] has a non-zero priority left.
  assert set(batch.info.key.tolist()) == {keys[1]}
  assert set(batch.info.priority.tolist()) == {1.0}
  assert set(batch.info.probability.tolist()) == {1.0}
  info = client.server_info()["p"]
  assert info["num_updates"] == 3 and info["num_deletes"] == 1
  # numpy keys (as sample_batch returns them) are accepted.
  client.mutate_priorities("p", updates={batch.info.key[0]: 4.0})
  assert client.sample("p")[0].info.priority == 4.0


def test_reset_and_server_info(servers):
  _, client = servers([uniform("a", max_size=7, limiter=rl.MinSize(2)), Table.queue("q", 3)])
  client.insert_batch([step(i) for i in range(3)], {"a": 1.0})
  client.sample("a", 2)
  info = client.server_info()
  assert set(info) == {"a", "q"}
  a = info["a"]
  assert (a["name"], a["size"], a["max_size"], a["num_inserts"], a["num_samples"]) == (
    "a",
    3,
    7,
    3,
    2,
  )
  limiter = a["rate_limiter"]
  assert limiter["min_size_to_sample"] == 2
  assert (limiter["inserts"], limiter["samples"]) == (3, 2)
  assert limiter["sample_stats"]["completed"] >= 1
  client.reset("a")
  a = client.server_info()["a"]
  assert a["size"] == 0 and a["num_resets"] == 1
  assert (a["rate_limiter"]["inserts"], a["rate_limiter"]["samples"]) == (0, 0)


def test_table_stats_are_size_max_size_and_lifetime_counts(servers):
  server, client = servers([uniform("a", max_size=7), Table.queue("q", 3)])
  client.insert_batch([step(i) for i in range(3)], {"a": 1.0})
  client.sample("a", 2)
  client.reset("a")  # empties the table; the counts go on
  client.insert(step(9), {"a": 1.0, "q": 1.0})
  expected = {
    "a": {"size": 1, "max_size": 7, "num_inserts": 4, "num_samples": 2},
    "q": {"size": 1, "max_size": 3, "num_inserts": 1, "num_samples": 0},
  }
  assert server.table_stats() == expected
  assert client.table_stats() == expected
  assert server.tables["q"].stats() == expected["q"]


# Blocking, timeouts, stopping.


def test_sample_under_min_size_times_out_with_the_limiter_error(servers):
  _, client = servers([uniform("a", limiter=rl.MinSize(3))])
  client.insert(step(0), {"a": 1.0})
  start = time.monotonic()
  with pytest.raises(RateLimiterTimeoutError) as caught:
    client.sample("a", timeout=0.2)
  assert 0.2 <= time.monotonic() - start < TIMEOUT
  assert caught.value.table == "a" and caught.value.operation == "sample"
  assert isinstance(caught.value, TimeoutError)
  with pytest.raises(RateLimiterTimeoutError):
    client.sample_batch("a", 4, timeout=0)


def test_insert_into_a_full_queue_times_out(servers):
  _, client = servers([Table.queue("q", 2)])
  client.insert_batch([step(0), step(1)], {"q": 1.0})
  with pytest.raises(RateLimiterTimeoutError) as caught:
    client.insert(step(2), {"q": 1.0}, timeout=0.05)
  assert caught.value.operation == "insert"
  assert sizes(client) == {"q": 2}


def test_a_batch_timing_out_in_its_second_table_says_how_far_it_got(servers):
  _, client = servers([uniform("a"), Table.queue("q", 2)])
  with pytest.raises(RateLimiterTimeoutError) as caught:
    client.insert_batch([step(i) for i in range(3)], {"a": 1.0, "q": 1.0}, timeout=0.05)
  assert "table 'q': 2 of the batch's 3 items were inserted" in caught.value.__notes__
  assert sizes(client) == {"a": 3, "q": 2}


def test_sample_returns_what_the_limiter_allows_within_the_timeout(servers):
  _, client = servers([Table.queue("q", 10)])
  client.insert_batch([step(0), step(1)], {"q": 1.0})
  samples = client.sample("q", 5, timeout=0.1)
  assert [s.data["reward"] for s in samples] == [0.0, 1.0]


def test_a_blocked_sample_wakes_when_an_item_arrives(servers):
  _, client = servers([Table.queue("q", 10)])
  result = {}
  sampler = threading.Thread(target=lambda: result.update(s=client.sample("q", timeout=TIMEOUT)))
  sampler.start()
  wait_until(
    lambda: client.server_info()["q"]["rate_limiter"]["sample_stats"]["pending"] == 1,
    "the sample blocking",
  )
  other = replay.Client(client._courier, timeout=TIMEOUT)
  other.insert(step(5), {"q": 1.0})
  sampler.join(TIMEOUT)
  assert not sampler.is_alive()
  assert result["s"][0].data["reward"] == 5.0


def test_stopping_the_server_wakes_a_blocked_sampler_with_table_closed(servers):
  server, client = servers([uniform("a", limiter=rl.MinSize(1))])
  outcome = {}

  def sample():
    try:
      client.sample("a", timeout=TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the test inspects it
      outcome["error"] = e

  sampler = threading.Thread(target=sample)
  sampler.start()
  wait_until(
    lambda: server.tables["a"].info()["rate_limiter"]["sample_stats"]["pending"] == 1,
    "the sample blocking",
  )
  start = time.monotonic()
  server.stop()
  sampler.join(TIMEOUT)
  assert not sampler.is_alive()
  assert time.monotonic() - start < TIMEOUT / 2
  assert isinstance(outcome["error"], TableClosedError), outcome
  assert outcome["error"].table == "a"
  server.stop()  # idempotent


# Bad input changes nothing.


def state(server) -> tuple:
  return (
    {name: len(table) for name, table in server.tables.items()},
    server.chunk_store.info(),
  )


def test_unknown_table_is_a_clear_error_listing_the_tables(servers):
  server, client = servers([uniform("a"), prioritized("b")])
  client.insert(step(0), {"a": 1.0})
  before = state(server)
  for call in (
    lambda: client.insert(step(1), {"a": 1.0, "nope": 1.0}),
    lambda: client.sample("nope", timeout=0),
    lambda: client.sample_batch("nope", 2, timeout=0),
    lambda: client.mutate_priorities("nope", {1: 1.0}),
    lambda: client.reset("nope"),
  ):
    with pytest.raises(ValueError, match=r"no table named 'nope'.*tables: 'a', 'b'"):
      call()
  assert state(server) == before


@pytest.mark.parametrize("priority", [-1.0, float("nan"), float("inf"), "high"])
def test_bad_priority_changes_no_table(servers, priority):
  server, client = servers([uniform("a"), prioritized("b")])
  before = state(server)
  with pytest.raises(ValueError, match="table 'b'"):
    client.insert(step(0), {"a": 1.0, "b": priority})
  with pytest.raises(ValueError):
    client.insert_batch([step(0), step(1)], [{"a": 1.0}, {"b": priority}])
  assert state(server) == before
  key = client.insert(step(0), {"b": 1.0})
  with pytest.raises(ValueError):
    client.mutate_priorities("b", {key: priority})
  assert client.sample("b")[0].info.priority == 1.0


def test_signature_mismatch_changes_nothing(servers):
  signed = uniform("signed", signature={"obs": (np.float32, (3,)), "reward": (np.float64, ())})
  server, client = servers([signed, uniform("free")])
  client.insert(step(0), {"signed": 1.0, "free": 1.0})  # matches
  before = state(server)
  bad_items = [
    {"obs": np.zeros(3, dtype=np.float64), "reward": 0.0},  # dtype
    {"obs": np.zeros(4, dtype=np.float32), "reward": 0.0},  # shape
    {"obs": np.zeros(3, dtype=np.float32)},  # missing column
    {**step(1), "extra": 1},  # extra column
  ]
  for bad in bad_items:
    with pytest.raises(ValueError, match=r"table 'signed'.*signature"):
      client.insert(bad, {"free": 1.0, "signed": 1.0})
  # A good item then a bad one in one batch: neither goes in.
  with pytest.raises(ValueError, match="signature"):
    client.insert_batch([step(1), bad_items[0]], {"signed": 1.0})
  assert state(server) == before


def test_bad_arguments_are_rejected(servers):
  server, client = servers([uniform("a")])
  with pytest.raises(ValueError, match="timeout"):
    client.sample("a", timeout=-1)
  with pytest.raises(ValueError, match="num_samples"):
    client.sample("a", 0)
  with pytest.raises(ValueError, match="priorities"):
    client.insert(step(0), {})
  with pytest.raises(ValueError, match="secret"):
    replay.Client(server.address)
  with pytest.raises(ValueError, match="unique"):
    replay.Server([uniform("a"), uniform("a")])
  with pytest.raises(ValueError, match="at least one table"):
    replay.Server([])
  assert state(server) == ({"a": 0}, {"num_chunks": 0, "nbytes": 0, "num_references": 0})


# Another process.


def child_main(address: str, secret: bytes, results) -> None:
  """In a spawned process: inserts a batch, samples it back, reports what it saw."""
  try:
    client = replay.Client(address, secret=secret, timeout=TIMEOUT)
    keys = client.insert_batch([step(i) for i in range(5)], {"q": 1.0, "u": 3.0})
    batch = client.sample_batch("q", 5)
    try:
      client.sample("q", timeout=0.05)
    except RateLimiterTimeoutError as e:
      error = type(e).__name__
    results.put(
      {"keys": keys, "sampled": batch.info.key.tolist(), "reward": batch.data["reward"].tolist()}
      | {"error": error}
    )
  except BaseException as e:  # noqa: BLE001 - reported to the test
    results.put({"failure": repr(e)})


def test_a_client_in_a_child_process(servers):
  server, client = servers([Table.queue("q", 10), uniform("u")])
  ctx = multiprocessing.get_context("spawn")
  results = ctx.Queue()
  child = ctx.Process(target=child_main, args=(server.address, server.secret, results))
  child.start()
  try:
    report = results.get(timeout=60)
    child.join(TIMEOUT)
  finally:
    if child.is_alive():
      child.terminate()
      child.join(TIMEOUT)
  assert "failure" not in report, report
  assert report["sampled"] == report["keys"]
  assert report["reward"] == [0.0, 1.0, 2.0, 3.0, 4.0]
  assert report["error"] == "RateLimiterTimeoutError"
  # The same data went to table u, stored once.
  assert sizes(client) == {"q": 0, "u": 5}
  assert client.server_info()["u"]["num_inserts"] == 5
  assert {s.info.priority for s in client.sample("u", 5)} == {3.0}
  assert child.exitcode == 0


def test_with_timeout_sets_the_default_timeout_of_every_call(servers):
  _, client = servers([Table.queue("q", 1)])
  quick = client.with_timeout(0.05)
  start = time.monotonic()
  with pytest.raises(RateLimiterTimeoutError):
    quick.sample("q")  # the queue is empty: waits 0.05 s, not the client's TIMEOUT
  assert time.monotonic() - start < TIMEOUT
  quick.insert(step(0), {"q": 1.0})
  assert sizes(client) == {"q": 1}  # the same server, through the same connections


def test_a_standalone_server_over_tls():
  tls = TlsConfig.generate()
  server = replay.Server([replay.Table.queue("q", 10)], tls=tls)
  try:
    client = server.localhost_client(timeout=10)
    client.insert({"obs": np.arange(3)}, {"q": 1.0})
    assert np.array_equal(client.sample("q")[0].data["obs"], np.arange(3))
    # A client without TLS is never greeted. (A courier client: a replay
    # Client's timeout bounds rate limiter waits, and its RPCs get 30 s more.)
    plain = CourierClient(server.address, secret=server.secret, label="replay", timeout=2)
    with pytest.raises(errors.CallTimeoutError):
      plain.server_info()
  finally:
    server.stop()

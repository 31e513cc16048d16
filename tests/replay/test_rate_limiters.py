"""Rate limiters: decisions, Reverb's deadlock rules, and blocking with real threads."""

from __future__ import annotations

import logging
import math
import pickle
import threading
import time

import numpy as np
import pytest

from launchpad.errors import LaunchpadError
from launchpad.replay import ChunkStore, RateLimiterTimeoutError, Table, TableClosedError, selectors
from launchpad.replay import rate_limiters as rl

WAIT = 10.0  # the longest any test waits for something that should happen


def wait_until(predicate, timeout: float = WAIT) -> None:
  """Polls a condition of the table's state (not a fixed sleep) until it holds."""
  deadline = time.monotonic() + timeout
  tick = threading.Event()
  while not predicate():
    assert time.monotonic() < deadline, "condition not reached in time"
    tick.wait(0.002)


def pending(table: Table, operation: str) -> int:
  return table.info()["rate_limiter"][f"{operation}_stats"]["pending"]


class Call:
  """Runs fn in a thread; `done` is set when it returns or raises."""

  def __init__(self, fn, *args, **kwargs):
    self.done = threading.Event()
    self.result = None
    self.error: BaseException | None = None
    self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
    self.thread.start()

  def _run(self, fn, args, kwargs):
    try:
      self.result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - handed to the test
      self.error = e
    finally:
      self.done.set()

  def wait(self, timeout: float = WAIT):
    assert self.done.wait(timeout), "the call did not finish in time"
    self.thread.join(timeout)
    return self.result


def new_table(limiter, name="t", max_size=1000, **kwargs) -> Table:
  store = ChunkStore()
  store.put(1, np.zeros(4, dtype=np.float32))
  return Table(
    name, selectors.Fifo(), selectors.Fifo(), max_size, limiter, chunk_store=store, **kwargs
  )


DATA = {"x": [(1, slice(0, 2))]}


# Decisions without threads.


@pytest.mark.parametrize(
  "make",
  [
    lambda: rl.MinSize(3),
    lambda: rl.Queue(5),
    lambda: rl.SampleToInsertRatio(2.0, 4, 6.0),
    lambda: rl.SampleToInsertRatio(0.5, 2, (-3.0, 3.0)),
    lambda: rl.RateLimiter(1.0, 3, -1.0, 2.0),
  ],
)
def test_inserts_allowed_is_what_one_insert_at_a_time_would_be_allowed(make):
  """Against the one-at-a-time rule, from many states, with and without evictions."""
  rng = np.random.default_rng(5)
  for _ in range(200):
    limiter = make()
    inserts = int(rng.integers(0, 12))
    limiter.restore_counters(
      {
        "inserts": inserts,
        "deletes": int(rng.integers(0, inserts + 1)),
        "samples": int(rng.integers(0, 3 * inserts + 1)),
      }
    )
    size = limiter.inserts - limiter.deletes
    max_size = int(rng.integers(max(size, 1), size + 4))
    limit = int(rng.integers(0, 10))
    expected, table_size, state = 0, size, limiter.snapshot()
    while expected < limit and limiter.can_insert():
      limiter.record_insert()
      expected += 1
      table_size += 1
      if table_size > max_size:
        limiter.record_delete()
        table_size -= 1
    limiter.restore_counters(state)
    assert limiter.inserts_allowed(limit, size, max_size) == expected, (state, size, max_size)


def test_min_size_blocks_samples_until_enough_items():
  limiter = rl.MinSize(3)
  for _ in range(2):
    assert limiter.can_insert() and not limiter.can_sample()
    limiter.record_insert()
  limiter.record_insert()
  assert limiter.can_sample() and limiter.can_sample(10**6)
  limiter.record_delete()
  assert not limiter.can_sample(), "below min size again after a delete"
  for _ in range(10**4):
    limiter.record_insert()
  assert limiter.can_insert(), "MinSize never limits inserts"


def test_sample_to_insert_ratio_walks_its_window():
  # samples_per_insert=2, min_size=2, error_buffer=3: offset 4, window [1, 7].
  limiter = rl.SampleToInsertRatio(2.0, 2, 3.0)
  assert (limiter.min_diff, limiter.max_diff) == (1.0, 7.0)
  assert not limiter.can_sample()
  limiter.record_insert()
  assert limiter.can_insert() and not limiter.can_sample()  # size 1 < 2
  limiter.record_insert()  # diff 4
  assert limiter.can_sample(3) and not limiter.can_sample(4)  # 4 - 3 = 1 >= 1; 4 - 4 < 1
  assert limiter.samples_allowed(10) == 3
  assert limiter.can_insert() and not limiter.can_insert(2)  # 6 <= 7; 8 > 7
  limiter.record_insert()  # diff 6
  assert not limiter.can_insert()  # 8 > 7
  limiter.record_sample()  # diff 5
  assert limiter.can_insert()  # 7 <= 7
  limiter.record_sample(4)  # diff 1
  assert not limiter.can_sample() and limiter.samples_allowed(5) == 0  # 0 < 1
  limiter.reset()
  assert (limiter.inserts, limiter.samples, limiter.deletes) == (0, 0, 0)


def test_queue_and_stack_limits():
  for cls in (rl.Queue, rl.Stack):
    limiter = cls(2)
    assert not limiter.can_sample()
    limiter.record_insert()
    limiter.record_insert()
    assert not limiter.can_insert(), "full"
    limiter.record_sample()
    limiter.record_delete()  # the table removes an item once it is sampled
    assert limiter.can_insert() and limiter.can_sample()
    with pytest.raises(ValueError, match="size"):
      cls(0)


# Reverb's configuration rules.


@pytest.mark.parametrize(
  ("samples_per_insert", "error_buffer", "ok"),
  [
    (2.0, 1.9, False),  # must be >= max(1, 2) = 2
    (2.0, 2.0, True),
    (0.5, 0.99, False),  # must be >= max(1, 0.5) = 1
    (0.5, 1.0, True),
    (8.0, (0.0, 15.0), False),  # a pair: width 15 < 2 * 8
    (8.0, (0.0, 16.0), True),
  ],
)
def test_error_buffer_must_cover_one_step_either_way(samples_per_insert, error_buffer, ok):
  if ok:
    rl.SampleToInsertRatio(samples_per_insert, 1, error_buffer)
  else:
    with pytest.raises(ValueError, match=r"2 \* max\(1, samples_per_insert\)"):
      rl.SampleToInsertRatio(samples_per_insert, 1, error_buffer)


def test_error_buffer_above_the_start_point_is_a_deadlock():
  # min_size 10 at 1 sample per insert: diff starts sampling at 10; a window from 11 up never lets a sample through.
  with pytest.raises(ValueError, match="deadlock"):
    rl.SampleToInsertRatio(1.0, 10, (11.0, 20.0))
  rl.SampleToInsertRatio(1.0, 10, (10.0, 20.0))


def test_error_buffer_below_the_start_point_warns(caplog):
  with caplog.at_level(logging.WARNING, logger="launchpad.replay.rate_limiters"):
    rl.SampleToInsertRatio(1.0, 10, (0.0, 5.0))
  assert "deadlocks" in caplog.text


def test_invalid_numbers_are_rejected():
  with pytest.raises(ValueError, match="min_size_to_sample"):
    rl.SampleToInsertRatio(1.0, 0, 5.0)
  with pytest.raises(ValueError, match="min_size_to_sample"):
    rl.MinSize(0)
  with pytest.raises(ValueError, match="samples_per_insert"):
    rl.SampleToInsertRatio(0.0, 1, 5.0)
  with pytest.raises(ValueError, match="samples_per_insert"):
    rl.RateLimiter(math.inf, 1, 0, 1)
  with pytest.raises(ValueError, match="NaN"):
    rl.SampleToInsertRatio(1.0, 1, math.nan)
  with pytest.raises(ValueError, match="min_diff"):
    rl.RateLimiter(1.0, 1, 5.0, 4.0)


def test_snapshot_round_trip_and_one_table_per_limiter():
  limiter = rl.SampleToInsertRatio(1.5, 3, 4.0)
  for _ in range(7):
    limiter.record_insert()
  limiter.record_sample(5)
  limiter.record_delete(2)
  copy = rl.RateLimiter.from_snapshot(pickle.loads(pickle.dumps(limiter.snapshot())))
  assert copy.info() == limiter.info() and copy.info()["type"] == "SampleToInsertRatio"
  with pytest.raises(ValueError, match="inserts"):
    copy.restore_counters({"inserts": -1, "samples": 0, "deletes": 0})
  new_table(limiter, name="first")
  with pytest.raises(ValueError, match="already belongs to table 'first'"):
    new_table(limiter, name="second")


# Blocking with real threads.


def test_sample_waits_for_min_size():
  table = new_table(rl.MinSize(2))
  call = Call(table.sample, 1, timeout=WAIT)
  wait_until(lambda: pending(table, "sample") == 1)
  table.insert(10, 1.0, DATA, timeout=0)
  assert not call.done.wait(0.05), "one item is not enough"
  table.insert(11, 1.0, DATA, timeout=0)
  [item] = call.wait()
  assert item.key == 10 and call.error is None
  stats = table.info()["rate_limiter"]["sample_stats"]
  assert stats["limited"] == 1 and stats["pending"] == 0 and stats["wait_seconds"] > 0


def test_insert_waits_for_samples_under_a_ratio():
  # 1 sample per insert, min size 1, error buffer 2: window [-1, 3]; the 4th insert must wait.
  table = new_table(rl.SampleToInsertRatio(1.0, 1, 2.0))
  for key in range(3):
    table.insert(key, 1.0, DATA, timeout=0)
  call = Call(table.insert, 3, 1.0, DATA, timeout=WAIT)
  wait_until(lambda: pending(table, "insert") == 1)
  assert len(table) == 3
  table.sample(1, timeout=0)
  call.wait()
  assert call.error is None and len(table) == 4


def test_timeouts_raise_a_timeout_error_naming_table_and_operation():
  table = new_table(rl.Queue(1), name="replay_q")
  start = time.monotonic()
  with pytest.raises(RateLimiterTimeoutError) as caught:
    table.sample(timeout=0.2)
  assert 0.2 <= time.monotonic() - start < WAIT
  error = caught.value
  assert isinstance(error, TimeoutError) and isinstance(error, LaunchpadError)
  assert error.table == "replay_q" and error.operation == "sample" and error.timeout == 0.2
  assert "'replay_q'" in str(error) and "a sample" in str(error) and "inserts=0" in str(error)
  table.insert(1, 1.0, DATA, timeout=0)
  with pytest.raises(RateLimiterTimeoutError, match="an insert") as caught:
    table.insert(2, 1.0, DATA, timeout=0)  # 0: fail at once
  assert caught.value.operation == "insert"
  restored = pickle.loads(pickle.dumps(caught.value))
  assert type(restored) is RateLimiterTimeoutError and str(restored) == str(caught.value)
  assert restored.table == "replay_q" and restored.state == caught.value.state
  stats = table.info()["rate_limiter"]
  assert stats["sample_stats"]["timeouts"] == 1 and stats["insert_stats"]["timeouts"] == 1
  assert len(table) == 1


def test_close_wakes_every_blocked_caller():
  empty = new_table(rl.MinSize(1), name="empty")
  full = new_table(rl.Queue(1), name="full")
  full.insert(1, 1.0, DATA, timeout=0)
  samplers = [Call(empty.sample, 1, timeout=60) for _ in range(3)]
  inserters = [Call(full.insert, 100 + i, 1.0, DATA, timeout=None) for i in range(2)]
  wait_until(lambda: pending(empty, "sample") == 3 and pending(full, "insert") == 2)
  empty.close()
  full.close()
  for call in samplers + inserters:
    call.wait()
    assert isinstance(call.error, TableClosedError), call.error
  assert {c.error.operation for c in samplers} == {"sample"}
  assert {c.error.operation for c in inserters} == {"insert"}
  assert "table 'empty' is closed" in str(samplers[0].error)
  assert pickle.loads(pickle.dumps(samplers[0].error)).table == "empty"
  # Later calls fail at once; reading and checkpointing still work.
  with pytest.raises(TableClosedError):
    full.sample(timeout=None)
  with pytest.raises(TableClosedError):
    empty.insert(5, 1.0, DATA, timeout=None)
  with pytest.raises(TableClosedError):
    full.insert(1, 2.0, DATA, timeout=None)  # even one that would only update a priority
  assert full.info()["closed"] and full.info()["rate_limiter"]["insert_stats"]["cancelled"] == 2
  assert len(full.snapshot()["items"]) == 1
  empty.close()  # idempotent


def test_reset_lets_waiting_inserts_proceed():
  table = new_table(rl.Queue(2))
  table.insert(1, 1.0, DATA, timeout=0)
  table.insert(2, 1.0, DATA, timeout=0)
  call = Call(table.insert, 3, 1.0, DATA, timeout=WAIT)
  wait_until(lambda: pending(table, "insert") == 1)
  table.reset()
  call.wait()
  assert call.error is None
  assert [item.key for item in table.sample(5, timeout=0)] == [3]


class CheckedRatio(rl.SampleToInsertRatio):
  """Checks the ratio's bounds at every change of its counters (they happen under the table lock)."""

  def __init__(self, *args):
    super().__init__(*args)
    self.violations: list[str] = []

  def _check(self, event: str) -> None:
    if self.diff > self.max_diff:
      self.violations.append(f"{event}: diff {self.diff} above {self.max_diff}")
    if self.samples and self.diff < self.min_diff:
      self.violations.append(f"{event}: diff {self.diff} below {self.min_diff}")

  def record_insert(self) -> None:
    super().record_insert()
    self._check("insert")

  def record_sample(self, count: int = 1) -> None:
    super().record_sample(count)
    self._check("sample")


def test_many_writers_and_samplers_keep_the_ratio_within_its_buffer():
  writers, per_writer, samplers = 4, 500, 3
  limiter = CheckedRatio(3.0, 20, 30.0)  # window [30, 90]
  store = ChunkStore()
  table = Table(
    "ratio", selectors.Prioritized(0.8, seed=1), selectors.Fifo(), 150, limiter, chunk_store=store
  )
  writers_done = threading.Event()
  errors: list[BaseException] = []
  sampled = [0] * samplers

  def write(writer: int) -> None:
    try:
      for chunk in range(per_writer // 10):
        chunk_key = writer * 1000 + chunk
        store.put(chunk_key, np.full((10, 2), chunk_key, dtype=np.int64), copy=False)
        for step in range(10):
          key = chunk_key * 100 + step
          table.insert(key, 1.0 + step, {"x": [(chunk_key, slice(step, step + 1))]}, timeout=WAIT)
        store.release([chunk_key])  # the items hold their own references now
    except BaseException as e:  # noqa: BLE001 - reported below
      errors.append(e)

  def sample(index: int) -> None:
    try:
      while True:
        try:
          for item in table.sample(4, timeout=0.05):
            assert item.data["x"][0, 0] == item.key // 100, "data of another item"
            sampled[index] += 1
        except RateLimiterTimeoutError:
          if writers_done.is_set():
            return
    except BaseException as e:  # noqa: BLE001 - reported below
      errors.append(e)

  threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
  threads += [threading.Thread(target=sample, args=(i,)) for i in range(samplers)]
  for thread in threads:
    thread.start()
  for thread in threads[:writers]:
    thread.join(WAIT * 3)
  writers_done.set()
  for thread in threads:
    thread.join(WAIT)
    assert not thread.is_alive()
  assert not errors, errors
  assert not limiter.violations, limiter.violations[:5]
  info = table.info()
  inserts = writers * per_writer
  assert info["num_inserts"] == limiter.inserts == inserts
  assert sum(sampled) == limiter.samples == info["num_samples"]
  # Drained: no further sample fits, so diff is within one sample of the window's floor.
  assert limiter.min_diff <= limiter.diff < limiter.min_diff + 1
  assert limiter.samples == pytest.approx(3.0 * inserts - 30, abs=1)
  # Every sampler left through a timeout: it waited for the limiter at least once.
  assert info["rate_limiter"]["sample_stats"]["timeouts"] >= samplers
  # Evictions released their chunks: what is stored is exactly what the items reference.
  referenced = {item["data"]["x"][0][0] for item in table.snapshot()["items"]}
  assert len(table) == 150 and set(store.keys()) == referenced
  assert store.info()["num_references"] == 150

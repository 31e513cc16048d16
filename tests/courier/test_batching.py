"""batched_handler: concurrent calls served as one batched call."""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import threading
import time

import numpy as np
import pytest

import launchpad as lp
from launchpad.courier.client import Client
from launchpad.courier.server import Server

from .conftest import TIMEOUT, in_thread

# Long enough that a batch in these tests only runs when it is full.
NEVER = 30.0


class Recorder:
  """A batched function's body: records each batch it gets."""

  def __init__(self, fn=None):
    self.batches: list = []
    self.lock = threading.Lock()
    self.fn = fn or (lambda x: x * 10)

  def __call__(self, *args, **kwargs):
    with self.lock:
      self.batches.append((args, kwargs))
    return self.fn(*args, **kwargs)


def call_concurrently(fn, argument_lists) -> list:
  """Calls fn(*args) for every args at the same time, from separate threads."""
  barrier = threading.Barrier(len(argument_lists))

  def call(args):
    barrier.wait(TIMEOUT)
    return fn(*args)

  with concurrent.futures.ThreadPoolExecutor(len(argument_lists)) as pool:
    futures = [pool.submit(call, args) for args in argument_lists]
    return [f.result(TIMEOUT + NEVER) for f in futures]


def test_full_batch_runs_once_and_every_caller_gets_its_row():
  recorder = Recorder()
  batched = lp.batched_handler(batch_size=4, timeout=NEVER)(recorder)
  results = call_concurrently(batched, [(np.full(3, i, np.float32),) for i in range(4)])
  assert len(recorder.batches) == 1
  (stacked,), kwargs = recorder.batches[0]
  assert kwargs == {}
  assert stacked.shape == (4, 3)
  assert sorted(stacked[:, 0].tolist()) == [0, 1, 2, 3]
  for i, result in enumerate(results):
    np.testing.assert_array_equal(result, np.full(3, 10 * i, np.float32))


def test_more_callers_than_batch_size_make_several_batches():
  recorder = Recorder()
  batched = lp.batched_handler(batch_size=2, timeout=NEVER)(recorder)
  results = call_concurrently(batched, [(np.array([i]),) for i in range(6)])
  assert [r.tolist() for r in results] == [[10 * i] for i in range(6)]
  assert [args[0].shape for args, _ in recorder.batches] == [(2, 1)] * 3


def test_timeout_runs_a_partial_batch():
  recorder = Recorder()
  batched = lp.batched_handler(batch_size=4, timeout=0.1)(recorder)
  assert batched(np.array([1.0, 2.0])).tolist() == [10.0, 20.0]
  assert [args[0].shape for args, _ in recorder.batches] == [(1, 2)]
  # Two callers: every call is answered, in batches smaller than 4.
  recorder.batches.clear()
  results = call_concurrently(batched, [(np.array([i]),) for i in range(2)])
  assert [r.tolist() for r in results] == [[0], [10]]
  sizes = [args[0].shape[0] for args, _ in recorder.batches]
  assert sum(sizes) == 2 and max(sizes) < 4


def test_timeout_as_timedelta():
  recorder = Recorder()
  batched = lp.batched_handler(batch_size=8, timeout=datetime.timedelta(milliseconds=50))(recorder)
  start = time.monotonic()
  assert batched(np.array(1)) == 10
  assert time.monotonic() - start < 5


def test_pad_batch_pads_to_batch_size():
  recorder = Recorder()
  batched = lp.batched_handler(batch_size=4, timeout=0.1, pad_batch=True)(recorder)
  results = call_concurrently(batched, [(np.array([i]),) for i in range(2)])
  assert [r.tolist() for r in results] == [[0], [10]]
  assert recorder.batches
  for (stacked,), _ in recorder.batches:
    assert stacked.shape == (4, 1)
  one = Recorder()
  padded = lp.batched_handler(batch_size=3, timeout=0.05, pad_batch=True)(one)
  assert padded(np.array([5, 6])).tolist() == [50, 60]
  (stacked,), _ = one.batches[0]
  np.testing.assert_array_equal(stacked, [[5, 6]] * 3)


def test_dict_tuple_and_kwargs_arguments_batch_element_wise():
  def body(obs, pair, *, scale):
    assert obs["image"].shape == (3, 2, 2)
    assert obs["step"].shape == (3,)
    assert pair[0].shape == (3, 4)
    assert isinstance(pair[1], list)
    assert scale.shape == (3,)
    return {
      "sum": obs["image"].sum(axis=(1, 2)) * scale,
      "both": (pair[0][:, 0], [name.upper() for name in pair[1]]),
    }

  recorder = Recorder(body)
  batched = lp.batched_handler(batch_size=3, timeout=NEVER)(recorder)
  calls = [
    ({"image": np.full((2, 2), i), "step": np.array(i)}, (np.arange(4) + i, f"n{i}"), i + 1)
    for i in range(3)
  ]
  results = call_concurrently(lambda obs, pair, s: batched(obs, pair, scale=np.array(s)), calls)
  assert len(recorder.batches) == 1
  for i, result in enumerate(results):
    assert result["sum"] == 4 * i * (i + 1)
    assert result["both"][0] == i
    assert result["both"][1] == f"N{i}"


def test_exception_reaches_every_caller():
  def body(x):
    raise ValueError(f"bad batch of {len(x)}")

  batched = lp.batched_handler(batch_size=4, timeout=NEVER)(Recorder(body))

  def call(i):
    try:
      batched(np.array(i))
    except ValueError as e:
      return str(e)
    return None

  assert call_concurrently(call, [(i,) for i in range(4)]) == ["bad batch of 4"] * 4


@pytest.mark.parametrize(
  "kwargs", [{"batch_size": 0}, {"batch_size": -3}, {"batch_size": 2, "max_parallelism": 0}]
)
def test_invalid_arguments_raise_value_error(kwargs):
  with pytest.raises(ValueError):
    lp.batched_handler(**kwargs)


def test_max_parallelism_limits_batches_running_at_once():
  running = 0
  peak = 0
  lock = threading.Lock()

  def body(x):
    nonlocal running, peak
    with lock:
      running += 1
      peak = max(peak, running)
    time.sleep(0.05)  # simulated work, so that batches could overlap
    with lock:
      running -= 1
    return x

  batched = lp.batched_handler(batch_size=1, max_parallelism=1)(body)
  call_concurrently(batched, [(np.array(i),) for i in range(4)])
  assert peak == 1


def test_max_parallelism_lets_batches_run_side_by_side():
  both_running = threading.Barrier(2)

  def body(x):
    both_running.wait(TIMEOUT)  # only passes if two batches run at the same time
    return x

  batched = lp.batched_handler(batch_size=1, max_parallelism=2)(body)
  results = call_concurrently(batched, [(np.array([i]),) for i in range(2)])
  assert [r.tolist() for r in results] == [[0], [1]]


class Policy:
  """Launchpad style: the batched method is wrapped in the constructor."""

  def __init__(self, batch_size: int, timeout: float = NEVER):
    self.batch_shapes: list = []
    self.compute = lp.batched_handler(batch_size=batch_size, timeout=timeout)(self.compute)

  def compute(self, observation):
    self.batch_shapes.append(observation.shape)
    return observation.sum(axis=1)


@pytest.fixture
def serve():
  servers = []

  def start(obj) -> Client:
    secret = os.urandom(16)
    server = Server(obj, secret=secret, label="policy")
    servers.append(server)
    return Client(server.start(), secret=secret, label="policy", timeout=TIMEOUT + NEVER)

  yield start
  for server in servers:
    server.stop()


def test_batched_method_served_to_futures(serve):
  policy = Policy(batch_size=4)
  client = serve(policy)
  futures = [client.futures.compute(np.full(5, i)) for i in range(4)]
  assert [f.result(TIMEOUT) for f in futures] == [5 * i for i in range(4)]
  assert policy.batch_shapes == [(4, 5)]


def test_batched_method_served_to_threads(serve):
  policy = Policy(batch_size=2)
  client = serve(policy)
  results = call_concurrently(client.compute, [(np.arange(3) + i,) for i in range(2)])
  assert results == [3, 6]
  assert policy.batch_shapes == [(2, 3)]


def test_batched_method_served_partial_batch_after_timeout(serve):
  policy = Policy(batch_size=8, timeout=0.1)
  client = serve(policy)
  result = in_thread(client.compute, np.ones(4))
  assert result.result(TIMEOUT) == 4
  assert policy.batch_shapes == [(1, 4)]

"""`batched_handler`: many concurrent calls of a method served as one call.

Useful for central inference: actors call `policy(observation)` one at a
time, the server runs the model once on a batch. numpy arrays are stacked
along a new first axis; tuples and dicts are batched element by element;
anything else becomes a list. The method returns a batched result, which is
split back so every caller receives its own row.
"""

from __future__ import annotations

import datetime
import functools
import threading
from collections.abc import Callable
from typing import Any


def batched_handler(
  batch_size: int,
  max_parallelism: int = 1,
  timeout: float | datetime.timedelta = 0.2,
  pad_batch: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Batches concurrent calls of the decorated function.

  Wrap bound methods in the constructor (`self.f = lp.batched_handler(8)(self.f)`)
  or decorate plain functions. The server must run calls concurrently, which
  courier does for every caller thread and every future.

  Args:
    batch_size: the most calls run together.
    max_parallelism: how many batches may run at the same time.
    timeout: seconds (or a timedelta) after the first call of a batch at which
      the batch runs even if it is not full.
    pad_batch: run short batches padded (repeating their last call) to
      `batch_size`, so every batch has the same shape.
  """
  if batch_size < 1:
    raise ValueError(f"batched_handler: batch_size must be >= 1, got {batch_size}.")
  if max_parallelism < 1:
    raise ValueError(f"batched_handler: max_parallelism must be >= 1, got {max_parallelism}.")
  seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)

  def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    batcher = _Batcher(fn, batch_size, max_parallelism, seconds, pad_batch)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      return batcher.call(args, kwargs)

    wrapper.batch_size = batch_size  # type: ignore[attr-defined]
    return wrapper

  return decorator


class _Call:
  __slots__ = ("args", "done", "error", "kwargs", "result")

  def __init__(self, args: tuple, kwargs: dict):
    self.args = args
    self.kwargs = kwargs
    self.done = threading.Event()
    self.result: Any = None
    self.error: BaseException | None = None


class _Batcher:
  """Collects calls; the call that fills a batch (or times out first) runs it."""

  def __init__(self, fn, batch_size, max_parallelism, timeout, pad_batch):
    self._fn = fn
    self._batch_size = batch_size
    self._timeout = timeout
    self._pad = pad_batch
    self._lock = threading.Condition()
    self._pending: list[_Call] = []
    self._slots = threading.Semaphore(max_parallelism)

  def call(self, args: tuple, kwargs: dict) -> Any:
    call = _Call(args, kwargs)
    with self._lock:
      self._pending.append(call)
      if len(self._pending) >= self._batch_size:
        batch = self._take()
      else:
        self._lock.notify_all()
        batch = None
    if batch is None and not call.done.wait(self._timeout):
      with self._lock:
        batch = self._take() if call in self._pending else None
    if batch is not None:
      self._run(batch)
    call.done.wait()
    if call.error is not None:
      raise call.error
    return call.result

  def _take(self) -> list[_Call]:
    batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
    return batch

  def _run(self, batch: list[_Call]) -> None:
    calls = batch + [batch[-1]] * (self._batch_size - len(batch)) if self._pad else batch
    try:
      with self._slots:
        args = tuple(stack([c.args[i] for c in calls]) for i in range(len(calls[0].args)))
        kwargs = {k: stack([c.kwargs[k] for c in calls]) for k in calls[0].kwargs}
        results = self._fn(*args, **kwargs)
      for i, call in enumerate(batch):
        call.result = unstack(results, i)
    except Exception as e:  # noqa: BLE001 - every caller of the batch sees the error
      for call in batch:
        call.error = e
    for call in batch:
      call.done.set()


def stack(values: list[Any]) -> Any:
  """Batches one argument's values from several calls."""
  import numpy as np  # not at module load: a node that never batches need not pay for numpy

  first = values[0]
  if isinstance(first, np.ndarray):
    return np.stack(values)
  if isinstance(first, tuple) and not hasattr(first, "_fields"):
    return tuple(stack([v[i] for v in values]) for i in range(len(first)))
  if isinstance(first, dict):
    return {k: stack([v[k] for v in values]) for k in first}
  return list(values)


def unstack(result: Any, index: int) -> Any:
  """The part of a batched result that belongs to call `index`."""
  if isinstance(result, tuple) and not hasattr(result, "_fields"):
    return tuple(unstack(r, index) for r in result)
  if isinstance(result, dict):
    return {k: unstack(v, index) for k, v in result.items()}
  return result[index]

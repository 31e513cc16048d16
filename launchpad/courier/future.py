"""The futures a courier client's `futures` view returns.

A `concurrent.futures.Future` builds a `threading.Condition` of its own as it
is made: an RLock, a deque and five bound methods, in Python code. For a
pipelined call that was the largest part of the caller's CPU (a burst of
2,000 futures spent about 8 of its 22 us per call there; docs/design.md).
The futures of one connection share their connection's condition instead.

They stay `concurrent.futures.Future`s: `wait`, `as_completed`,
`add_done_callback` and `cancel` use the condition only as a lock, and the
shared one serves them as well (it is re-entrant, as `wait` needs when it
takes each future's condition in turn). A shared condition wakes every
thread waiting on the connection when any of its futures completes, so
`result` and `exception` wait in a loop until their own future is done or
their time is up, where the stock methods wait once.

The fields set here are those `Future.__init__` sets in Python 3.11 to
3.13; tests/courier/test_future_batches.py checks each public behaviour on the
Python the suite runs on.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures._base import (
  CANCELLED,
  CANCELLED_AND_NOTIFIED,
  FINISHED,
  PENDING,
  RUNNING,
)
from typing import Any

_ENDED = (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)
_OPEN = (PENDING, RUNNING)


class CallFuture(Future):
  """A future of one courier call, on the condition of its connection."""

  def __init__(
    self, condition: threading.Condition
  ):  # not super().__init__: its condition is the cost
    self._condition = condition
    self._state = PENDING
    self._result = None
    self._exception = None
    self._waiters = []
    self._done_callbacks = []

  def result(self, timeout: float | None = None) -> Any:
    if self._state == FINISHED and self._exception is None:
      return self._result  # the common case, without the lock
    self._wait(timeout)
    return super().result(0)

  def exception(self, timeout: float | None = None) -> BaseException | None:
    self._wait(timeout)
    return super().exception(0)

  def _wait(self, timeout: float | None) -> None:
    """Waits until this future is done or cancelled; TimeoutError after `timeout` seconds."""
    end = None if timeout is None else time.monotonic() + timeout
    with self._condition:
      while self._state not in _ENDED:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
          raise TimeoutError()
        self._condition.wait(left)


def complete_all(
  condition: threading.Condition, outcomes: list[tuple[CallFuture, Any, BaseException | None]]
) -> None:
  """Completes futures of one condition with (future, result, error) each,
  in one hold of the condition and one wake of its waiters.

  What `set_result` and `set_exception` do for each, without taking the
  condition and waking every waiter once per future (the reader of a
  connection completes many replies read together: per future, that was
  a third of its time). A future its caller cancelled refuses its outcome
  and is marked notified, as `set_running_or_notify_cancel` does, which
  `wait` and `as_completed` need. Callbacks run after, outside the condition.
  """
  called = []
  with condition:
    for future, result, error in outcomes:
      state = future._state
      if state not in _OPEN:
        if state == CANCELLED:
          future._state = CANCELLED_AND_NOTIFIED
          for waiter in future._waiters:
            waiter.add_cancelled(future)
        continue
      if error is None:
        future._result = result
        future._state = FINISHED
        for waiter in future._waiters:
          waiter.add_result(future)
      else:
        future._exception = error
        future._state = FINISHED
        for waiter in future._waiters:
          waiter.add_exception(future)
      if future._done_callbacks:
        called.append(future)
    condition.notify_all()
  for future in called:
    future._invoke_callbacks()

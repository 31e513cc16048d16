"""Deadlines: one point in time by which a whole operation must be done.

A timeout given to each system call does not bound an operation made of
many: a peer that sends one byte just before every read would time out
would hold it forever. A `Deadline` is fixed once, when the operation
starts; every wait inside it (connecting, a handshake, sending, reading a
reply) gets only the time that is left, and when none is left the operation
fails with `CallTimeoutError` naming what it was doing.

Timeouts are seconds, or a `datetime.timedelta` (Launchpad's and Reverb's
APIs take those), everywhere in launchpad (courier, replay, the control plane):
- None (or infinity): no deadline; the operation waits as long as it takes.
- 0, or a deadline that has passed: the operation may not wait at all.
"""

from __future__ import annotations

import datetime
import math
import numbers
import time

from launchpad import errors

Timeout = float | datetime.timedelta | None
"""Seconds (or a timedelta) to wait; None waits as long as it takes; 0 does not wait."""


def validate(timeout: Timeout, what: str = "timeout") -> float | None:
  """`timeout` as seconds (float), or None for no limit; ValueError or
  TypeError naming `what` (e.g. "the timeout of the client of node
  learner[0]") otherwise."""
  if timeout is None:
    return None
  if isinstance(timeout, datetime.timedelta):
    seconds = timeout.total_seconds()
  elif isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
    raise TypeError(
      f"{what} must be None (no limit) or a number of seconds, got {type(timeout).__name__} "
      f"{timeout!r}."
    )
  else:
    seconds = float(timeout)
  if math.isnan(seconds) or seconds < 0:
    raise ValueError(
      f"{what} must be None (no limit) or a number of seconds >= 0, got {timeout!r}; "
      "0 means that calls may not wait at all."
    )
  return None if math.isinf(seconds) else seconds


def positive(value: object, what: str) -> float:
  """`value` as a float, or ValueError naming `what` unless it is a finite
  number of seconds > 0 (a period, a lease: not a timeout, so never None)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not math.isfinite(value)
    or value <= 0
  ):
    raise ValueError(f"{what} must be a number of seconds > 0, got {value!r}")
  return float(value)


class Deadline:
  """When an operation must be done, from a timeout in seconds (None: never).

  Args:
    timeout: seconds from now; None for no deadline.
    operation: what the deadline bounds, for errors ("call learner[0].update").
    advice: what the user can do about a timeout, appended to errors.
  """

  __slots__ = ("advice", "at", "operation", "timeout")

  def __init__(self, timeout: float | None, operation: str, advice: str = ""):
    self.timeout = timeout
    self.at = None if timeout is None else time.monotonic() + timeout
    self.operation = operation
    self.advice = advice

  def remaining(self) -> float | None:
    """Seconds left (0.0 once passed); None without a deadline."""
    if self.at is None:
      return None
    return max(0.0, self.at - time.monotonic())

  def expired(self) -> bool:
    """True once the deadline has passed (never without one)."""
    return self.at is not None and time.monotonic() >= self.at

  def error(self, what: str) -> errors.CallTimeoutError:
    """The error for this deadline passing `what` (e.g. "while reading the reply")."""
    message = f"{self.operation} did not finish within its {self.timeout:g} s timeout: {what}."
    if self.advice:
      message += " " + self.advice
    return errors.CallTimeoutError(message)

"""The exceptions the replay service raises.

They derive from `launchpad.errors.LaunchpadError` so one `except` catches
every launchpad failure, and from the matching built-in (`TimeoutError`) so
code that knows nothing of launchpad still handles them sensibly. Each one
pickles back to the same type and attributes: the replay server (later) sends
them to clients through courier, which pickles exceptions.
"""

from __future__ import annotations

from launchpad.errors import LaunchpadError


class ReplayError(LaunchpadError):
  """Base class of every error raised by `launchpad.replay`."""


class RateLimiterTimeoutError(ReplayError, TimeoutError):
  """An insert or a sample waited for its rate limiter longer than its timeout.

  Attributes:
    table: the table's name.
    operation: "insert" or "sample", what the caller waited to do.
    timeout: the timeout in seconds.
    state: a description of the limiter's state when the wait ended.
  """

  def __init__(self, table: str, operation: str, timeout: float, state: str = ""):
    message = (
      f"table {table!r}: timed out after {timeout:g} s waiting for the rate limiter to allow "
      f"{'an insert' if operation == 'insert' else 'a sample'}"
    )
    if state:
      message += f" ({state})"
    super().__init__(message)
    self.table = table
    self.operation = operation
    self.timeout = timeout
    self.state = state

  def __reduce__(self):
    # The state carries the notes (how far a batch got) to the client too.
    return (type(self), (self.table, self.operation, self.timeout, self.state), self.__dict__)


class TableClosedError(ReplayError):
  """The table was closed (its server is stopping) before or while a call waited.

  Attributes:
    table: the table's name.
    operation: "insert" or "sample", what the caller was doing.
  """

  def __init__(self, table: str, operation: str):
    super().__init__(f"table {table!r} is closed: the {operation} cannot proceed")
    self.table = table
    self.operation = operation

  def __reduce__(self):
    return (type(self), (self.table, self.operation), self.__dict__)

"""What a sweep refuses: an error that names the parameter, trial or option, and what to do."""

from __future__ import annotations

from launchpad import errors


class SweepError(errors.LaunchpadError):
  """A sweep cannot run as asked (a bad space, factory, option, storage or
  sweep directory); nothing of it ran, or it stopped. The message says what
  is wrong and what to do."""


class TrialFailedError(SweepError):
  """A trial failed and the sweep stopped, as `fail_fast` asks.

  Attributes:
    number: the trial's number.
    error: its traceback, or what went wrong.
  """

  def __init__(self, number: int, error: str):
    super().__init__(
      f"trial {number} failed, so the sweep stopped (fail_fast; the trials it stopped run "
      f"again when it runs again):\n{error}"
    )
    self.number = number
    self.error = error

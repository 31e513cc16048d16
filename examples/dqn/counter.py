"""A shared step counter: how many environment steps the actors have taken so far."""

from __future__ import annotations

import threading

ENV_STEPS = "env_steps"


class Counter:
  """Counts named quantities for every node (Acme's counter), served by a CourierNode.

  Actors add the environment steps they took, and read the total from the
  reply to set their exploration rate; the evaluator reads it to place its
  returns on the learning curve and to end the run at the step budget.
  """

  def __init__(self) -> None:
    self._lock = threading.Lock()  # calls arrive from several courier threads
    self._counts: dict[str, int] = {ENV_STEPS: 0}

  def increment(self, **counts: int) -> dict[str, int]:
    """Adds `counts` (name -> amount) and returns every count after the addition."""
    with self._lock:
      for name, amount in counts.items():
        self._counts[name] = self._counts.get(name, 0) + amount
      return dict(self._counts)

  def get_counts(self) -> dict[str, int]:
    """Every count so far."""
    with self._lock:
      return dict(self._counts)

"""A shared step counter, which stops the program once the actors spent their step budget."""

from __future__ import annotations

import threading

import launchpad as lp

ENV_STEPS = "env_steps"


class Counter:
  """Counts named quantities for every node (Acme's counter), served by a CourierNode.

  Actors add the environment steps they took; the evaluator reads them to
  place its returns on the learning curve. Once `env_steps` reaches
  `max_env_steps`, the counter stops the whole program with `lp.stop()`.
  """

  def __init__(self, max_env_steps: int) -> None:
    self._max_env_steps = max_env_steps
    self._lock = threading.Lock()  # calls arrive from several courier threads
    self._counts: dict[str, int] = {ENV_STEPS: 0}
    self._stopped = False

  def increment(self, **counts: int) -> dict[str, int]:
    """Adds `counts` (name -> amount) and returns every count after the addition."""
    with self._lock:
      for name, amount in counts.items():
        self._counts[name] = self._counts.get(name, 0) + amount
      snapshot = dict(self._counts)
      budget_spent = not self._stopped and snapshot[ENV_STEPS] >= self._max_env_steps
      self._stopped |= budget_spent
    if budget_spent:
      print(
        f"Counter: {snapshot[ENV_STEPS]} environment steps reached the budget of "
        f"{self._max_env_steps}; stopping the program",
        flush=True,
      )
      lp.stop()
    return snapshot

  def get_counts(self) -> dict[str, int]:
    """Every count so far."""
    with self._lock:
      return dict(self._counts)

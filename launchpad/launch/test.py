"""The test launcher (`test_mt`): the whole program inside the test process.

Like the threads launcher, but it never touches signals or exits the
process: a node's failure is raised in the test (by `wait()`, at teardown,
and by the `lp_launch` pytest fixture), and teardown always stops the program.
"""

from __future__ import annotations

from typing import Any

from launchpad.launch import threads
from launchpad.launch.controller import Controller
from launchpad.launch.plan import Plan


def launch(plan: Plan, grace_period: float = 10.0, test_case: Any = None) -> Controller:
  """Starts the program; with a unittest `test_case`, stops it (and raises a
  node's failure) at the test's cleanup."""
  controller = threads.launch(plan, grace_period, handle_signals=False)
  if test_case is not None:
    add_cleanup(test_case, controller)
  return controller


def add_cleanup(test_case: Any, controller: Controller) -> None:
  """Stops the program at the test's cleanup, raising a node's failure there."""
  test_case.addCleanup(_teardown, controller)


def _teardown(controller: Controller) -> None:
  controller.stop()
  controller.raise_failure(again=False)

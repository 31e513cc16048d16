"""Programs launched inside a unittest test case (`lp.launch(..., test_case=self)`).

The test kinds (`test_mt`, `test_mp`) never touch signals or hold the
process: a node's failure is raised in the test (by `wait()`, at teardown,
and by the `lp_launch` pytest fixture), and teardown always stops the program.
"""

from __future__ import annotations

from typing import Any

from launchpad.launch.controller import Controller


def add_cleanup(test_case: Any, controller: Controller) -> None:
  """Stops the program at the test's cleanup, raising a node's failure there."""
  test_case.addCleanup(_teardown, controller)


def _teardown(controller: Controller) -> None:
  controller.stop()
  controller.raise_failure(again=False)

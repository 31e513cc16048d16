"""Testing program topologies in one process, with real RPC.

In a pytest suite, enable the fixture in `conftest.py`:

    pytest_plugins = ["launchpad.testing"]

and use it:

    def test_learner_serves_params(lp_launch):
      program = make_program()
      controller = lp_launch(program)
      learner = program.groups["learner"][0].create_handle().dereference()
      assert learner.get_params() is not None

The program runs as threads of the test process (`test_mt`). At teardown it
is stopped, whatever the test did, and a node that failed fails the test with
that node's traceback (unless the test already saw that failure raised by
`controller.wait()`). In a unittest.TestCase, pass `test_case=self` to
`lp.launch(program, launch_type='test_mt', test_case=self)` for the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from launchpad.launch import launch
from launchpad.launch.controller import Controller
from launchpad.program import Program


@pytest.fixture
def lp_launch() -> Iterator[Callable[..., Controller]]:
  """Launches programs in test mode; stops them and raises node failures at teardown."""
  controllers: list[Controller] = []

  def _launch(program: Program, **kwargs: Any) -> Controller:
    controller = launch(program, launch_type="test_mt", **kwargs)
    controllers.append(controller)
    return controller

  yield _launch
  for controller in controllers:
    controller.stop()
  for controller in controllers:
    controller.raise_failure(again=False)

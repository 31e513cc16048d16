"""Tests of the `lp_launch` pytest fixture of launchpad.testing, run in inner pytest sessions."""

from __future__ import annotations

pytest_plugins = ["pytester"]

CONFTEST = """
pytest_plugins = ["launchpad.testing"]
"""

FAILING_NODE_TESTS = """
import launchpad as lp


class Service:
  def ping(self):
    return "pong"


def inner_failing_node():
  raise ValueError("inner node exploded 1234")


def test_body_passes_but_node_fails(lp_launch):
  program = lp.Program("inner")
  program.add_node(lp.PyNode(inner_failing_node), label="failer")
  program.add_node(lp.CourierNode(Service), label="service")
  lp_launch(program)
"""

PASSING_TESTS = """
import launchpad as lp

CONTROLLERS = []


class Service:
  def __init__(self, base):
    self._base = base

  def add(self, x):
    return self._base + x


def test_serves(lp_launch):
  program = lp.Program("inner")
  handle = program.add_node(lp.CourierNode(Service, 40), label="service")
  controller = lp_launch(program)
  CONTROLLERS.append(controller)
  assert handle.dereference().with_timeout(10).add(2) == 42
  assert not controller.done


def test_previous_program_was_stopped_at_teardown():
  assert len(CONTROLLERS) == 1
  assert CONTROLLERS[0].done
  assert CONTROLLERS[0].failures() == []


def test_two_programs_in_one_test(lp_launch):
  first = lp.Program("first")
  first.add_node(lp.CourierNode(Service, 1), label="service")
  second = lp.Program("second")
  second.add_node(lp.CourierNode(Service, 2), label="service")
  CONTROLLERS.extend([lp_launch(first), lp_launch(second)])
  assert not any(c.done for c in CONTROLLERS[1:])


def test_both_programs_were_stopped():
  assert len(CONTROLLERS) == 3
  assert all(c.done for c in CONTROLLERS)
"""


def test_failing_node_fails_the_inner_test_with_its_traceback(pytester):
  pytester.makeconftest(CONFTEST)
  pytester.makepyfile(test_inner=FAILING_NODE_TESTS)
  result = pytester.runpytest("-p", "no:cacheprovider")
  # The body passed; the fixture's teardown reports the node's failure.
  result.assert_outcomes(passed=1, errors=1)
  assert result.ret != 0
  output = result.stdout.str()
  assert "NodeFailedError" in output
  assert "failer[0]" in output
  assert "inner node exploded 1234" in output
  assert "inner_failing_node" in output  # the frame of the node's traceback
  assert "Traceback (most recent call last)" in output


def test_passing_program_passes_and_is_stopped_at_teardown(pytester):
  pytester.makeconftest(CONFTEST)
  pytester.makepyfile(test_inner=PASSING_TESTS)
  result = pytester.runpytest("-p", "no:cacheprovider")
  result.assert_outcomes(passed=4)
  assert result.ret == 0

"""Tests of the test launcher (`test_mt`) and its unittest integration."""

from __future__ import annotations

import signal
import unittest

import pytest

import launchpad as lp
from tests.launching import launching

TIMEOUT = 10.0


class Counter:
  def __init__(self, start):
    self._value = start

  def increment(self, by=1):
    self._value += by
    return self._value


def fail_when_stopped():
  lp.wait_for_stop(TIMEOUT)
  raise RuntimeError("failed during shutdown 7")


def fail_at_once():
  raise RuntimeError("failed at once 8")


launched = launching(launch_type="test_mt")


def test_handles_dereferenced_in_the_test_thread_can_be_called(launched):
  program = lp.Program("counting")
  handle = program.add_node(lp.CourierNode(Counter, 10), label="counter")
  controller = launched(program)
  client = handle.dereference().with_timeout(TIMEOUT)
  assert client.increment() == 11
  assert client.increment(by=5) == 16
  # A handle taken from the program's groups works as well.
  again = program.groups["counter"][0].create_handle().dereference().with_timeout(TIMEOUT)
  assert again.increment() == 17
  controller.stop(timeout=TIMEOUT)
  assert controller.done


def test_test_launcher_leaves_signal_handlers_alone(launched):
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  program = lp.Program("counting")
  program.add_node(lp.CourierNode(Counter, 0), label="counter")
  controller = launched(program)
  assert {sig: signal.getsignal(sig) for sig in before} == before
  controller.stop(timeout=TIMEOUT)


def test_failure_is_raised_by_wait(launched):
  program = lp.Program("failing")
  program.add_node(lp.PyNode(fail_at_once), label="failer")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError, match=r"failer\[0\][\s\S]*failed at once 8") as info:
    controller.wait(TIMEOUT)
  assert isinstance(info.value.__cause__, RuntimeError)


def run_case(case_class):
  suite = unittest.defaultTestLoader.loadTestsFromTestCase(case_class)
  result = unittest.TestResult()
  suite.run(result)
  return result


def test_unittest_cleanup_stops_a_passing_program():
  controllers = []

  class Case(unittest.TestCase):
    def test_counts(self):
      program = lp.Program("counting")
      handle = program.add_node(lp.CourierNode(Counter, 1), label="counter")
      controller = lp.launch(program, launch_type="test_mt", test_case=self)
      controllers.append(controller)
      self.assertEqual(handle.dereference().with_timeout(TIMEOUT).increment(), 2)
      self.assertFalse(controller.done)

  result = run_case(Case)
  assert result.testsRun == 1
  assert result.wasSuccessful(), result.errors + result.failures
  assert len(controllers) == 1
  assert controllers[0].done  # stopped by the test's cleanup


def test_unittest_cleanup_reports_a_failing_node():
  controllers = []

  class Case(unittest.TestCase):
    def test_with_failing_node(self):
      program = lp.Program("failing")
      program.add_node(lp.PyNode(fail_when_stopped), label="failer")
      program.add_node(lp.CourierNode(Counter, 0), label="counter")
      controllers.append(lp.launch(program, launch_type="test_mt", test_case=self))

  try:
    result = run_case(Case)
  finally:
    for controller in controllers:
      controller.stop(timeout=TIMEOUT)
  assert result.testsRun == 1
  assert not result.wasSuccessful()
  assert len(result.errors) == 1, result.errors
  text = result.errors[0][1]
  assert "NodeFailedError" in text
  assert "failer[0]" in text
  assert "failed during shutdown 7" in text
  assert "fail_when_stopped" in text  # the node's traceback
  assert controllers[0].done


def test_unittest_cleanup_stops_the_program_when_the_test_fails():
  controllers = []

  class Case(unittest.TestCase):
    def test_fails(self):
      program = lp.Program("counting")
      program.add_node(lp.CourierNode(Counter, 0), label="counter")
      controllers.append(lp.launch(program, launch_type="test_mt", test_case=self))
      self.fail("the test body failed")

  try:
    result = run_case(Case)
  finally:
    for controller in controllers:
      controller.stop(timeout=TIMEOUT)
  assert len(result.failures) == 1
  assert "the test body failed" in result.failures[0][1]
  assert result.errors == []
  assert controllers[0].done

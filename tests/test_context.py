"""Tests of the stop API nodes use: lp.stop, lp.wait_for_stop, lp.stop_event and
stop handlers."""

from __future__ import annotations

import threading
from concurrent import futures

import pytest

import launchpad as lp
from launchpad import context as lp_context
from launchpad import errors
from tests.launching import launching

TIMEOUT = 10.0


class Idle:
  """A courier node that serves until the program stops."""

  def ping(self):
    return "pong"


launched = launching(launch_type="test_mt")


def call_stop(out):
  try:
    lp.stop()
  except BaseException as e:
    out.set_exception(e)
    raise
  out.set_result("stopped")


def test_stop_from_the_nodes_main_thread(launched):
  out = futures.Future()
  program = lp.Program("stopper")
  program.add_node(lp.PyNode(call_stop, out), label="stopper")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program, serialize_py_nodes=False)
  assert out.result(timeout=TIMEOUT) == "stopped"
  assert controller.wait(TIMEOUT) is True  # the serving node stopped too
  assert controller.failures() == []


def stop_from_own_thread(out):
  thread_error = []

  def target():
    try:
      lp.stop()
    except BaseException as e:  # noqa: BLE001 - reported to the test
      thread_error.append(e)

  thread = threading.Thread(target=target, name="spawned-by-node")
  thread.start()
  thread.join(TIMEOUT)
  stopped = lp.wait_for_stop(TIMEOUT)
  out.set_result((stopped, thread_error, thread.is_alive()))


@pytest.mark.parametrize("launch_type", ["test_mt", "local_mt"])
def test_stop_from_a_thread_the_node_started(launched, launch_type):
  out = futures.Future()
  program = lp.Program("spawner")
  program.add_node(lp.PyNode(stop_from_own_thread, out), label="spawner")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program, launch_type=launch_type, serialize_py_nodes=False)
  stopped, thread_error, alive = out.result(timeout=TIMEOUT)
  assert thread_error == []
  assert not alive
  assert stopped is True
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


def test_stop_from_the_launching_thread(launched):
  program = lp.Program("idle")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  assert controller.wait(0.05) is False
  lp.stop()
  assert controller.wait(TIMEOUT) is True


def wait_twice(ready, out):
  first = lp.wait_for_stop(0.05)
  ready.set_result(first)
  out.set_result(lp.wait_for_stop(TIMEOUT))


def test_wait_for_stop_times_out_then_returns_true_after_stop(launched):
  ready, out = futures.Future(), futures.Future()
  program = lp.Program("waiter")
  program.add_node(lp.PyNode(wait_twice, ready, out), label="waiter")
  controller = launched(program, serialize_py_nodes=False)
  assert ready.result(timeout=TIMEOUT) is False
  assert not out.done()
  controller.stop(timeout=TIMEOUT)
  assert out.result(timeout=TIMEOUT) is True


def watch_stop_event(ready, out):
  event = lp.stop_event()
  ready.set_result((isinstance(event, threading.Event), event.is_set(), event is lp.stop_event()))
  out.set_result(event.wait(TIMEOUT))


def test_stop_event_is_set_when_the_program_stops(launched):
  ready, out = futures.Future(), futures.Future()
  program = lp.Program("evented")
  program.add_node(lp.PyNode(watch_stop_event, ready, out), label="watcher")
  controller = launched(program, serialize_py_nodes=False)
  assert ready.result(timeout=TIMEOUT) == (True, False, True)
  controller.stop(timeout=TIMEOUT)
  assert out.result(timeout=TIMEOUT) is True


def register_and_wait(calls, ready):
  lp.register_stop_handler(lambda: calls.append("node"))
  ready.set_result(True)
  lp.wait_for_stop(TIMEOUT)


def test_stop_handlers_run_once_on_stop(launched):
  calls = []
  ready = futures.Future()
  program = lp.Program("handlers")
  program.add_node(lp.PyNode(register_and_wait, calls, ready), label="registrar")
  controller = launched(program, serialize_py_nodes=False)
  assert ready.result(timeout=TIMEOUT)
  lp.register_stop_handler(lambda: calls.append("launcher"))
  assert calls == []
  lp.stop()
  assert controller.wait(TIMEOUT) is True
  controller.stop(timeout=TIMEOUT)  # a second stop runs nothing again
  assert sorted(calls) == ["launcher", "node"]


def register_after_stop(out):
  lp.wait_for_stop(TIMEOUT)
  calls = []
  lp.register_stop_handler(lambda: calls.append("late"))
  out.set_result(list(calls))


def test_handler_registered_after_stop_runs_at_once(launched):
  out = futures.Future()
  program = lp.Program("late")
  program.add_node(lp.PyNode(register_after_stop, out), label="late")
  controller = launched(program, serialize_py_nodes=False)
  assert controller.wait(0.05) is False
  controller.stop(timeout=TIMEOUT)
  assert out.result(timeout=TIMEOUT) == ["late"]


def test_unregister_stop_handler(launched):
  calls = []

  def first():
    calls.append("first")

  def second():
    calls.append("second")

  program = lp.Program("unregister")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  lp.register_stop_handler(first)
  lp.register_stop_handler(second)
  lp.unregister_stop_handler(first)
  with pytest.raises(ValueError, match="not a registered stop handler"):
    lp.unregister_stop_handler(first)
  with pytest.raises(ValueError, match="not a registered stop handler"):
    lp.unregister_stop_handler(lambda: None)
  controller.stop(timeout=TIMEOUT)
  assert calls == ["second"]


def test_a_failing_stop_handler_does_not_prevent_the_others(launched):
  calls = []

  def broken():
    calls.append("broken")
    raise RuntimeError("handler failed")

  program = lp.Program("broken")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  lp.register_stop_handler(broken)
  lp.register_stop_handler(lambda: calls.append("after"))
  controller.stop(timeout=TIMEOUT)
  assert calls == ["broken", "after"]
  assert controller.failures() == []


@pytest.mark.parametrize(
  "call",
  [
    lp.stop,
    lp.stop_event,
    lambda: lp.wait_for_stop(0.01),
    lambda: lp.register_stop_handler(print),
    lambda: lp.unregister_stop_handler(print),
  ],
  ids=["stop", "stop_event", "wait_for_stop", "register", "unregister"],
)
def test_stop_api_without_a_running_program_raises(call):
  with pytest.raises(errors.LaunchpadError) as info:
    call()
  message = str(info.value)
  assert "no launchpad program runs in this process" in message
  assert "inside a node" in message


def test_stop_from_a_node_stops_only_its_own_program(launched):
  other = lp.Program("other")
  other_idle = other.add_node(lp.CourierNode(Idle), label="idle")
  other_controller = launched(other)

  out = futures.Future()
  program = lp.Program("stopper")
  program.add_node(lp.PyNode(call_stop, out), label="stopper")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program, serialize_py_nodes=False)
  assert out.result(timeout=TIMEOUT) == "stopped"
  assert controller.wait(TIMEOUT) is True
  assert other_controller.wait(0.1) is False
  assert other_idle.dereference().with_timeout(TIMEOUT).ping() == "pong"


def test_stop_from_the_launcher_is_ambiguous_with_two_programs(launched):
  first = lp.Program("first")
  first.add_node(lp.CourierNode(Idle), label="idle")
  second = lp.Program("second")
  second.add_node(lp.CourierNode(Idle), label="idle")
  first_controller = launched(first)
  second_controller = launched(second)
  with pytest.raises(errors.LaunchpadError) as info:
    lp.stop()
  message = str(info.value)
  assert "2 programs" in message
  assert "first" in message and "second" in message
  assert first_controller.wait(0.05) is False
  assert second_controller.wait(0.05) is False


class Stopper:
  """A courier node whose method stops the program it serves."""

  def stop(self):
    lp.stop()
    return "stopping"


def call_remote_stop(stopper, out):
  out.set_result(stopper.stop())


def test_stop_inside_an_rpc_handler_stops_the_handlers_own_program(launched):
  other = lp.Program("other")
  other.add_node(lp.CourierNode(Idle), label="idle")
  other_controller = launched(other)

  out = futures.Future()
  program = lp.Program("rpc_stopper")
  stopper = program.add_node(lp.CourierNode(Stopper), label="stopper")
  program.add_node(lp.PyNode(call_remote_stop, stopper, out), label="caller")
  controller = launched(program, serialize_py_nodes=False)
  assert out.result(timeout=TIMEOUT) == "stopping"  # not "2 programs run in this process"
  assert controller.wait(TIMEOUT) is True
  assert "stopper[0]" in controller.status().reason
  assert other_controller.wait(0.1) is False


def test_wait_event_in_the_main_thread_still_waits_and_returns():
  event = threading.Event()
  assert lp_context.wait_event(event, 0.25) is False
  threading.Timer(0.05, event.set).start()
  assert lp_context.wait_event(event, TIMEOUT) is True
  assert lp_context.wait_event(event, None) is True

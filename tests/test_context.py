"""Tests of the stop API nodes use: lp.stop, lp.wait_for_stop, lp.stop_event and
stop handlers."""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
import time
from concurrent import futures

import pytest
from child_process import Child

import launchpad as lp
from launchpad import context as lp_context
from launchpad import errors
from tests.launching import launching

TIMEOUT = 10.0
SUBPROCESS_TIMEOUT = 30.0


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
  ran = futures.Future()
  lp.register_stop_handler(lambda: ran.set_result(threading.current_thread()))
  out.set_result((ran.result(timeout=TIMEOUT), threading.current_thread()))


def test_handler_registered_after_stop_runs_soon_in_another_thread(launched):
  out = futures.Future()
  program = lp.Program("late")
  program.add_node(lp.PyNode(register_after_stop, out), label="late")
  controller = launched(program, serialize_py_nodes=False)
  assert controller.wait(0.05) is False
  controller.stop(timeout=TIMEOUT)
  handler_thread, node_thread = out.result(timeout=TIMEOUT)
  assert handler_thread is not node_thread


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
  lp.unregister_stop_handler(first)  # not registered any more: ignored, as in Launchpad
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
  [lp.stop, lp.stop_event, lambda: lp.wait_for_stop(0.01)],
  ids=["stop", "stop_event", "wait_for_stop"],
)
def test_stop_api_without_a_running_program_raises(call):
  with pytest.raises(errors.LaunchpadError) as info:
    call()
  message = str(info.value)
  assert "no launchpad program runs in this process" in message
  assert "inside a node" in message


def test_stop_handlers_outside_a_program_are_accepted_and_unregistered_silently():
  def handler():
    pass

  lp.register_stop_handler(handler)
  lp.unregister_stop_handler(handler)
  lp.unregister_stop_handler(handler)
  lp.unregister_stop_handler(print)


def test_register_stop_handler_refuses_what_it_cannot_call():
  with pytest.raises(TypeError, match="function of no arguments"):
    lp.register_stop_handler("not a function")


def test_handler_registered_before_launch_runs_when_the_program_stops(launched):
  ran = futures.Future()
  lp.register_stop_handler(lambda: ran.set_result(True))
  program = lp.Program("adopted")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  assert not ran.done()
  controller.stop(timeout=TIMEOUT)
  assert ran.result(timeout=TIMEOUT) is True


def test_wait_for_stop_takes_launchpads_timeout_secs(launched):
  program = lp.Program("secs")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  assert lp.wait_for_stop(timeout_secs=0.01) is False
  assert lp.wait_for_stop(timeout=0.01) is False
  with pytest.raises(TypeError, match="timeout_secs or timeout"):
    lp.wait_for_stop(timeout_secs=1, timeout=1)
  controller.stop(timeout=TIMEOUT)


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


# Stop semantics: what Acme's stop handlers do, and what the stop machinery
# must survive.


def raise_into_this_thread_on_stop(exception: type[BaseException] = SystemExit):
  """Acme's runtime_terminator: a stop handler that raises `exception` in the
  thread that registered it, with PyThreadState_SetAsyncExc."""
  worker = threading.get_ident()

  def handler():
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(
      ctypes.c_ulong(worker), ctypes.py_object(exception)
    )
    assert count < 2, "raised in more than one thread"

  lp.register_stop_handler(handler)


def spin_until_terminated(ready=None):
  """Runs Python code (where an asynchronous exception can land) until one does."""
  if ready is not None:
    ready.set()
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    time.sleep(0.001)
  raise RuntimeError("the stop handler never ended this thread")


def steps_limiter(exception=SystemExit):
  """Acme's StepsLimiter: terminator registered, then lp.stop() from the same thread."""
  raise_into_this_thread_on_stop(exception)
  lp.stop()
  spin_until_terminated()


@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_a_node_ended_by_systemexit_from_its_stop_handler_has_stopped(launched, launch_type):
  # Many runs: the exception lands at a different point each time, once inside
  # lp.stop()'s own control-plane call, before the stop was made safe. Under
  # test_mp that call is a gRPC call to the coordinator, whose channel lock
  # the exception once left held.
  timeout = TIMEOUT if launch_type == "test_mt" else SUBPROCESS_TIMEOUT
  for run in range(10):
    program = lp.Program(f"limiter{run}")
    program.add_node(lp.CourierNode(Idle), label="counter")
    program.add_node(lp.PyNode(steps_limiter), label="counter")
    controller = launched(program, launch_type=launch_type)
    assert controller.wait(timeout) is True, f"run {run} did not end"
    assert controller.failures() == [], f"run {run}"
    assert "counter[1]" in controller.status().reason


def terminated_worker(ready):
  raise_into_this_thread_on_stop()
  spin_until_terminated(ready)


def stop_when_ready(ready):
  assert ready.wait(TIMEOUT)
  lp.stop()


def test_systemexit_raised_by_a_stop_handler_into_another_node_is_a_stop(launched):
  ready = threading.Event()
  program = lp.Program("terminated")
  program.add_node(lp.PyNode(terminated_worker, ready), label="actor")
  program.add_node(lp.PyNode(stop_when_ready, ready), label="stopper")
  controller = launched(program, serialize_py_nodes=False)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


class Preempted(Exception):
  """What a stop handler of the user's own may raise into a node's thread."""


def test_any_exception_a_stop_handler_raises_into_a_node_is_a_stop(launched):
  program = lp.Program("preempted")
  program.add_node(lp.PyNode(steps_limiter, Preempted), label="limiter")
  controller = launched(program, serialize_py_nodes=False)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


def fail_during_stop():
  lp.stop()
  assert lp.wait_for_stop(TIMEOUT)
  raise ValueError("checkpoint failed while stopping")


def test_a_node_that_crashes_while_stopping_still_fails(launched):
  program = lp.Program("crashing")
  program.add_node(lp.PyNode(fail_during_stop), label="saver")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError, match=r"saver\[0\].*checkpoint failed while stopping"):
    controller.wait(TIMEOUT)


def exit_without_a_stop():
  sys.exit(3)


def test_systemexit_with_an_error_status_without_a_stop_is_a_failure(launched):
  program = lp.Program("exiting")
  program.add_node(lp.PyNode(exit_without_a_stop), label="quitter")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError, match=r"quitter\[0\] failed: SystemExit: 3"):
    controller.wait(TIMEOUT)


def test_stop_handlers_run_after_the_coordinator_knows_and_not_in_the_callers_thread(launched):
  program = lp.Program("ordered")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  seen = futures.Future()
  lp.register_stop_handler(
    lambda: seen.set_result((controller.status().stopping, threading.current_thread()))
  )
  lp.stop()
  stopping, handler_thread = seen.result(timeout=TIMEOUT)
  assert stopping is True
  assert handler_thread is not threading.current_thread()
  assert controller.wait(TIMEOUT) is True


def test_stop_again_once_stopping_returns_at_once(launched):
  program = lp.Program("twice")
  program.add_node(lp.CourierNode(Idle), label="idle")
  controller = launched(program)
  lp.stop()
  lp.stop()  # no second call to the coordinator, no error
  assert controller.wait(TIMEOUT) is True


# Stop handlers with no program: Acme's single-process EnvironmentLoop.

SINGLE_PROCESS_LOOP = r"""
import ctypes
import os
import sys
import threading
import time

import launchpad as lp


def say(text):
  os.write(1, (text + "\n").encode())


loop_thread = threading.get_ident()


def terminate_loop():
  say("HANDLER")
  if sys.argv[1] == "terminate":
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
      ctypes.c_ulong(loop_thread), ctypes.py_object(SystemExit)
    )


lp.register_stop_handler(terminate_loop)
deadline = time.monotonic() + 60
try:
  say("READY")  # inside the try: the exception may come as soon as the test reads this
  while time.monotonic() < deadline:
    time.sleep(0.01)
except SystemExit:
  say("LOOP_ENDED")
  raise
say("NEVER_TERMINATED")
"""


@pytest.fixture
def loop_script(tmp_path):
  started = []

  def _start(mode):
    path = tmp_path / "loop.py"
    path.write_text(SINGLE_PROCESS_LOOP)
    started.append(Child([sys.executable, "-u", str(path), mode], SUBPROCESS_TIMEOUT))
    return started[-1]

  yield _start
  for child in started:
    child.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_runs_the_stop_handlers_of_a_process_without_a_program(loop_script, signum):
  child = loop_script("terminate")
  child.wait_for_line("READY")
  child.process.send_signal(signum)
  child.wait_for_line("HANDLER")
  child.wait_for_line("LOOP_ENDED")
  assert child.finish() == 0, child.output()


def test_a_second_signal_acts_as_without_stop_handlers(loop_script):
  child = loop_script("ignore")
  child.wait_for_line("READY")
  child.process.send_signal(signal.SIGTERM)
  child.wait_for_line("HANDLER")
  child.process.send_signal(signal.SIGTERM)
  assert child.finish() == -signal.SIGTERM, child.output()

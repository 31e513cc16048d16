"""Tests of the threads launcher (`local_mt`, `threads`) and of lp.launch's options."""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
from concurrent import futures

import psutil
import pytest
from absl import flags
from child_process import Child

import launchpad as lp
from launchpad import context, errors
from tests.launching import launching

TIMEOUT = 10.0
SUBPROCESS_TIMEOUT = 15.0


class Service:
  def ping(self):
    return "pong"


class CustomError(ValueError):
  pass


def raise_custom():
  raise CustomError("custom failure 42")


def raise_unpicklable():
  error = RuntimeError("cannot travel")
  error.lock = threading.Lock()
  raise error


def watch_stop(out):
  out.set_result(lp.wait_for_stop(TIMEOUT))


def returns_value(x):
  return x * 2


launched = launching(launch_type="local_mt")


def serving_program(name="served"):
  program = lp.Program(name)
  handle = program.add_node(lp.CourierNode(Service), label="service")
  return program, handle


@pytest.mark.parametrize("launch_type", ["local_mt", "threads"])
def test_wait_times_out_while_running_and_returns_true_after_stop(launched, launch_type):
  program, handle = serving_program()
  controller = launched(program, launch_type=launch_type)
  assert isinstance(controller, lp.Controller)
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
  assert controller.wait(0.1) is False
  assert not controller.done
  controller.stop(timeout=TIMEOUT)
  assert controller.done
  assert controller.wait(TIMEOUT) is True
  assert controller.wait(0) is True


def connections_to_the_coordinator(service, out):
  """Calls `service` (a resolve and a registration on the way), then counts
  this process's TCP connections to the program's coordinator."""
  service.with_timeout(TIMEOUT).ping()
  port = int(context.current_runtime().control.address.rsplit(":", 1)[1])
  out.set_result(
    sum(1 for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port)
  )


def test_nodes_call_the_coordinator_of_their_own_process_without_rpc(launched):
  program, handle = serving_program()
  counted = futures.Future()
  program.add_node(lp.PyNode(connections_to_the_coordinator, handle, counted), label="counter")
  controller = launched(program, serialize_py_nodes=False)
  assert counted.result(TIMEOUT) == 0
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def test_program_whose_nodes_all_return_ends_by_itself(launched):
  program = lp.Program("short")
  program.add_node(lp.PyNode(returns_value, 1), label="a")
  program.add_node(lp.PyNode(returns_value, 2), label="a")
  controller = launched(program)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


def test_context_manager_stops_the_program(launched):
  program, handle = serving_program()
  with launched(program) as controller:
    assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
    assert not controller.done
  assert controller.done


def test_context_manager_raises_a_node_failure(launched):
  program = lp.Program("failing")
  program.add_node(lp.PyNode(raise_custom), label="failer")
  with pytest.raises(lp.NodeFailedError, match=r"failer\[0\]"):
    with launched(program) as controller:
      pass  # __exit__ stops the program and raises the failure
  assert controller.done


def test_context_manager_keeps_the_bodys_exception(launched):
  program, _ = serving_program()
  with pytest.raises(KeyError, match="from the body"):
    with launched(program) as controller:
      raise KeyError("from the body")
  assert controller.done


def test_node_failure_is_raised_by_wait_and_stops_the_others(launched):
  saw_stop = futures.Future()
  program = lp.Program("failing")
  program.add_node(lp.PyNode(raise_custom), label="failer")
  program.add_node(lp.PyNode(watch_stop, saw_stop), label="watcher")
  program.add_node(lp.CourierNode(Service), label="service")
  controller = launched(program, serialize_py_nodes=False)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  message = str(error)
  assert error.node == "failer[0]"
  assert "failer[0]" in message
  assert "custom failure 42" in message
  assert "Traceback (most recent call last)" in message
  assert "raise_custom" in message  # the frame that raised
  assert "CustomError" in error.remote_traceback
  assert isinstance(error.__cause__, CustomError)
  assert str(error.__cause__) == "custom failure 42"
  assert saw_stop.result(timeout=TIMEOUT) is True
  assert controller.done
  assert [r.name for r in controller.failures()] == ["failer[0]"]
  # Every later wait raises it again.
  with pytest.raises(lp.NodeFailedError):
    controller.wait(0)


def test_failure_with_an_unpicklable_exception_still_has_the_traceback(launched):
  program = lp.Program("failing")
  program.add_node(lp.PyNode(raise_unpicklable), label="failer")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  message = str(info.value)
  assert "RuntimeError: cannot travel" in message
  assert "raise_unpicklable" in message


def test_stop_returns_even_if_failures_happened(launched):
  program = lp.Program("failing")
  program.add_node(lp.PyNode(raise_custom), label="failer")
  controller = launched(program)
  controller.stop(timeout=TIMEOUT)  # failures are not raised by stop()
  assert controller.done
  with pytest.raises(lp.NodeFailedError):
    controller.raise_failure()


def ignore_stop(release):
  release.wait(TIMEOUT)


def test_stop_timeout_when_a_node_ignores_the_stop(launched):
  release = threading.Event()
  program = lp.Program("stubborn")
  program.add_node(lp.PyNode(ignore_stop, release), label="stubborn")
  controller = launched(program, serialize_py_nodes=False, grace_period=0.1)
  try:
    with pytest.raises(errors.CallTimeoutError, match="stubborn"):
      controller.stop(timeout=0.5)
    assert not controller.done
  finally:
    release.set()
  assert controller.wait(TIMEOUT) is True


# Choosing the launcher.


def test_flag_lp_launch_type_is_honoured(launched):
  before = signal.getsignal(signal.SIGINT)
  program, handle = serving_program()
  try:
    flags.FLAGS(["prog", "--lp_launch_type=test_mt"])
    controller = launched(program, launch_type=None)
  finally:
    flags.FLAGS.unparse_flags()
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
  # The test launcher leaves signals alone; the threads launcher would not.
  assert signal.getsignal(signal.SIGINT) is before
  controller.stop(timeout=TIMEOUT)

  program, _ = serving_program()
  controller = launched(program, launch_type=None)  # unparsed flag: local_mt
  assert signal.getsignal(signal.SIGINT) is not before
  controller.stop(timeout=TIMEOUT)


def test_flag_with_an_unknown_launch_type_is_rejected():
  program, _ = serving_program()
  try:
    flags.FLAGS(["prog", "--lp_launch_type=bogus_type"])
    with pytest.raises(ValueError, match="bogus_type"):
      lp.launch(program)
  finally:
    flags.FLAGS.unparse_flags()


def test_unknown_launch_type_is_rejected_with_the_known_ones():
  program, _ = serving_program()
  with pytest.raises(ValueError) as info:
    lp.launch(program, launch_type="warp_drive")
  message = str(info.value)
  assert "warp_drive" in message
  assert "local_mt" in message and "test_mt" in message


@pytest.mark.parametrize(
  "launch_type", [lp.LaunchType.LOCAL_MULTI_THREADING, lp.LaunchType.TEST_MULTI_THREADING]
)
def test_launch_type_enum_is_accepted(launched, launch_type):
  program, handle = serving_program()
  controller = launched(program, launch_type=launch_type)
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
  controller.stop(timeout=TIMEOUT)


def test_launchpad_keyword_arguments_are_accepted(launched):
  program, handle = serving_program()
  controller = launched(
    program,
    launch_type="local_mt",
    terminal="current_terminal",
    local_resources={"service": {"env": {"X": "1"}}},
    serialize_py_nodes=True,
    test_case=None,
  )
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
  controller.stop(timeout=TIMEOUT)
  assert controller.done


# Signals and exit status, in a real process.

SERVING_SCRIPT = r"""
import os

import launchpad as lp


def say(*words):
  # One write per line: lines of different threads do not interleave.
  os.write(1, (" ".join(map(str, words)) + "\n").encode())


class Service:
  def ping(self):
    return "pong"


def watcher():
  lp.register_stop_handler(lambda: say("NODE_STOP_HANDLER"))
  say("NODE_SAW_STOP", lp.wait_for_stop(60))


def main():
  program = lp.Program("signalled")
  handle = program.add_node(lp.CourierNode(Service), label="service")
  program.add_node(lp.PyNode(watcher), label="watcher")
  controller = lp.launch(program, launch_type="local_mt")
  lp.register_stop_handler(lambda: say("LAUNCHER_STOP_HANDLER"))
  assert handle.dereference().with_timeout(30).ping() == "pong"
  say("READY")
  say("WAIT_RETURNED", controller.wait(timeout=60))


if __name__ == "__main__":
  main()
"""

STUBBORN_SCRIPT = r"""
import os
import threading

import launchpad as lp


def say(*words):
  # One write per line: lines of different threads do not interleave.
  os.write(1, (" ".join(map(str, words)) + "\n").encode())


def stubborn():
  threading.Event().wait(60)


def main():
  program = lp.Program("stubborn")
  program.add_node(lp.PyNode(stubborn), label="stubborn")
  controller = lp.launch(program, launch_type="local_mt", grace_period=60)
  lp.register_stop_handler(lambda: say("STOPPING"))
  say("READY")
  say("WAIT_RETURNED", controller.wait(timeout=60))


if __name__ == "__main__":
  main()
"""

SIGNAL_TO_ANOTHER_THREAD_SCRIPT = r"""
import os
import signal
import threading

import launchpad as lp


def say(*words):
  os.write(1, (" ".join(map(str, words)) + "\n").encode())


def idle():
  threading.Event().wait(60)


def main():
  program = lp.Program("stubborn")
  program.add_node(lp.PyNode(idle), label="stubborn")
  controller = lp.launch(program, launch_type="local_mt", grace_period=1)
  lp.register_stop_handler(lambda: say("STOPPING"))
  bystander = threading.Thread(target=threading.Event().wait, args=(60,), daemon=True)
  bystander.start()
  # As the kernel may do with a Ctrl-C: the signal lands on another thread
  # while the main thread waits.
  signal.pthread_kill(bystander.ident, signal.SIGINT)
  say("WAIT_RETURNED", controller.wait(timeout=60))


if __name__ == "__main__":
  main()
"""

# A main that returns right after lp.launch, as Acme's do; its nodes start
# threads and thread pools after that, which they cannot once the
# interpreter has begun to shut down.
MAIN_RETURNS_SCRIPT = r"""
import concurrent.futures
import os
import sys
import threading
import time

from absl import app

import launchpad as lp

main_done = threading.Event()


def say(*words):
  os.write(1, (" ".join(map(str, words)) + "\n").encode())


def pools_after_main(fail):
  assert main_done.wait(60)
  # Long enough to outlast the main code's return by far, however loaded.
  deadline = time.monotonic() + 1.0
  count = 0
  while count < 20 or time.monotonic() < deadline:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      assert pool.submit(sum, [1, 2]).result(30) == 3
    thread = threading.Thread(target=int)
    thread.start()
    thread.join()
    count += 1
  say("POOLS_OK")
  if fail:
    raise RuntimeError("late failure in node")


def main(argv=()):
  program = lp.Program("late")
  program.add_node(lp.PyNode(pools_after_main, "fail" in sys.argv), label="worker")
  lp.launch(program, launch_type="local_mt", serialize_py_nodes=False)
  say("MAIN_RETURNED")
  main_done.set()
  if "raise" in sys.argv:
    raise KeyError("main gave up")


if __name__ == "__main__":
  if "absl" in sys.argv:
    app.run(main)
  else:
    main()
"""


class Script(Child):
  """A Python script running in a child process, its output read line by line."""

  def __init__(self, tmp_path, source, *args):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    super().__init__([sys.executable, "-u", str(path), *args], SUBPROCESS_TIMEOUT)


@pytest.fixture
def script(tmp_path):
  started = []

  def _start(source, *args):
    started.append(Script(tmp_path, source, *args))
    return started[-1]

  yield _start
  for child in started:
    child.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_program_gracefully(script, signum):
  child = script(SERVING_SCRIPT)
  child.wait_for_line("READY")
  child.process.send_signal(signum)
  status = child.finish()
  stdout = "".join(child.stdout)
  assert status == 0, child.output()
  assert "LAUNCHER_STOP_HANDLER" in stdout
  assert "NODE_STOP_HANDLER" in stdout
  assert "NODE_SAW_STOP True" in stdout
  assert "WAIT_RETURNED True" in stdout
  assert stdout.count("LAUNCHER_STOP_HANDLER") == 1


def test_second_sigint_exits_at_once(script):
  child = script(STUBBORN_SCRIPT)
  child.wait_for_line("READY")
  child.process.send_signal(signal.SIGINT)
  child.wait_for_line("STOPPING")
  child.process.send_signal(signal.SIGINT)
  status = child.finish()
  assert status == 128 + signal.SIGINT, child.output()
  assert "WAIT_RETURNED" not in "".join(child.stdout)


def test_a_signal_delivered_to_another_thread_stops_the_program_promptly(script):
  child = script(SIGNAL_TO_ANOTHER_THREAD_SCRIPT)
  child.wait_for_line("STOPPING")  # not after controller.wait's 60 s
  child.wait_for_line("WAIT_RETURNED True")


@pytest.mark.parametrize("entry", ["plain", "absl"])
def test_program_runs_to_its_end_after_main_returned(script, entry):
  child = script(MAIN_RETURNS_SCRIPT, entry)
  status = child.finish()
  stdout = "".join(child.stdout)
  assert "MAIN_RETURNED" in stdout
  assert "POOLS_OK" in stdout, child.output()
  assert status == 0, child.output()


def test_node_failing_after_main_returned_exits_with_status_1(script):
  child = script(MAIN_RETURNS_SCRIPT, "fail")
  status = child.finish()
  stderr = "".join(child.stderr)
  assert "POOLS_OK" in "".join(child.stdout), child.output()
  assert status == 1, child.output()
  assert "worker[0]" in stderr
  assert "Traceback (most recent call last)" in stderr
  assert "RuntimeError: late failure in node" in stderr


def test_main_raising_after_launch_still_waits_for_the_program(script):
  child = script(MAIN_RETURNS_SCRIPT, "raise")
  status = child.finish()
  assert "POOLS_OK" in "".join(child.stdout), child.output()
  assert "KeyError: 'main gave up'" in "".join(child.stderr)
  assert status == 1, child.output()

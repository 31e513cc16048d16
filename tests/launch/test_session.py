"""The launch session: whatever fails before supervision starts, everything
set up so far is closed, newest first, and nothing reads as running."""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
import time
from collections.abc import Callable

import psutil
import pytest

import launchpad as lp
from launchpad import context, errors
from launchpad.launch import plan as plan_lib
from launchpad.launch import processes, threads
from launchpad.launch import session as session_lib

WAIT_SECONDS = 60.0


class StartFailed(Exception):
  pass


@dataclasses.dataclass(frozen=True)
class _NoOptions:
  pass


class _FailingAfterOne:
  """Threads that start the first node, then fail to start the others."""

  def __init__(self, workers, first: str):
    self._workers = workers
    self._first = first

  def start_all(self) -> None:
    self._workers.start(self._first)
    raise StartFailed("the second node could not start")

  def __getattr__(self, name):
    return getattr(self._workers, name)


class _FailingLauncher:
  """The threads launcher, with a run directory, whose start fails midway."""

  options = _NoOptions
  single_host = True
  nodes_travel = False

  def __init__(self):
    self.run = None
    self.address = None

  def prepare(self, session, options):
    self.run = session.create_run()
    workers = threads.LAUNCHER.prepare(session, threads.ThreadsOptions())
    self.address = session.coordinator.address
    return _FailingAfterOne(workers, session.plan.workers[0].name)


def _refuses(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except OSError:
    return True
  return False


def test_a_start_that_fails_midway_leaves_nothing_running(tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  stopped = threading.Event()

  def waiter():
    lp.wait_for_stop()
    stopped.set()

  program = lp.Program("halfway")
  program.add_node(lp.PyNode(waiter), label="first")
  program.add_node(lp.PyNode(waiter), label="second")
  launcher = _FailingLauncher()
  plan = plan_lib.make_plan(program, serialize=False)
  with pytest.raises(StartFailed):
    session_lib.run(launcher, plan, _NoOptions(), grace_period=5.0, handle_signals=False)
  assert stopped.wait(WAIT_SECONDS), "the node that had started never heard of the stop"
  assert launcher.run.over(), "the run directory still reads as running"
  assert _refuses(launcher.address), "the coordinator still serves"
  with pytest.raises(errors.LaunchpadError, match="no launchpad program runs"):
    context.current_runtime()


class _FailingOnceRunning:
  """The processes launcher's workers, whose start fails (`fail()`) once a
  node process runs; records the processes it had then."""

  def __init__(self, workers, fail: Callable[[], None]):
    self._workers = workers
    self._fail = fail
    self._before = _descendants()
    self.started: list[psutil.Process] = []

  def start_all(self) -> None:
    self._workers.start_all()
    deadline = time.monotonic() + WAIT_SECONDS
    while not self._workers.pids():  # the fork server reports each fork
      if time.monotonic() > deadline:
        raise AssertionError(f"no node process started within {WAIT_SECONDS:.0f} s")
      time.sleep(0.05)
    self.started = [
      p for p in psutil.Process().children(recursive=True) if p.pid not in self._before
    ]
    self._fail()

  def __getattr__(self, name):
    return getattr(self._workers, name)


class _ProcessesFailingOnceRunning:
  """The processes launcher, whose start fails once a node process runs."""

  options = _NoOptions
  single_host = True
  nodes_travel = True

  def __init__(self, fail: Callable[[], None]):
    self._fail = fail
    self.run = None
    self.address = None
    self.workers = None

  def prepare(self, session, options):
    workers = processes.LAUNCHER.prepare(session, processes.ProcessesOptions())
    self.run = session.run
    self.address = session.coordinator.address
    self.workers = _FailingOnceRunning(workers, self._fail)
    return self.workers


def _descendants() -> set[int]:
  return {p.pid for p in psutil.Process().children(recursive=True)}


def _waiting_program(name: str) -> lp.Program:
  program = lp.Program(name)
  program.add_node(lp.PyNode(lp.wait_for_stop), label="first")
  program.add_node(lp.PyNode(lp.wait_for_stop), label="second")
  return program


def _assert_all_closed(launcher: _ProcessesFailingOnceRunning) -> None:
  """No node process or fork server left, the run over, the coordinator
  closed, and no runtime of the program in this process."""
  assert launcher.workers.started, "the failure came before any node process ran"
  _, alive = psutil.wait_procs(launcher.workers.started, timeout=WAIT_SECONDS)
  assert not alive, f"processes outlived the failed start: {alive}"
  assert launcher.run.over(), "the run directory still reads as running"
  assert _refuses(launcher.address), "the coordinator still serves"
  with pytest.raises(errors.LaunchpadError, match="no launchpad program runs"):
    context.current_runtime()


def _start_failed() -> None:
  raise StartFailed("the launcher's start failed once a node ran")


def test_a_processes_start_that_fails_midway_leaves_no_process_and_nothing_running():
  launcher = _ProcessesFailingOnceRunning(_start_failed)
  plan = plan_lib.make_plan(_waiting_program("halfway_processes"), serialize=True)
  with pytest.raises(StartFailed):
    session_lib.run(launcher, plan, _NoOptions(), grace_period=5.0, handle_signals=False)
  _assert_all_closed(launcher)


def test_ctrl_c_during_the_start_closes_everything_set_up():
  """A real SIGINT, under Python's own handler (KeyboardInterrupt), once a
  node process runs and before supervision starts."""
  launcher = _ProcessesFailingOnceRunning(lambda: signal.raise_signal(signal.SIGINT))
  plan = plan_lib.make_plan(_waiting_program("interrupted"), serialize=True)
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      session_lib.run(launcher, plan, _NoOptions(), grace_period=5.0, handle_signals=False)
  finally:
    signal.signal(signal.SIGINT, previous)
  _assert_all_closed(launcher)


def _plan() -> plan_lib.Plan:
  program = lp.Program("p")
  program.add_node(lp.PyNode(print), label="printer")
  return plan_lib.make_plan(program, serialize=False)


def test_clean_ups_run_newest_first_and_one_failing_does_not_stop_the_others(caplog):
  session = session_lib.Session(_plan())
  ran = []
  session.on_close("first", lambda: ran.append("first"))
  session.on_close("broken", lambda: 1 / 0)
  session.on_close("last", lambda: ran.append("last"))
  session.close()
  session.close()  # once only
  assert ran == ["last", "first"]
  assert "closing broken failed" in caplog.text


def test_a_launcher_that_starts_no_coordinator_is_told_what_prepare_must_do():
  class Lazy:
    options = _NoOptions
    single_host = True
    nodes_travel = False

    def prepare(self, session, options):
      return None

  plan = _plan()
  with pytest.raises(TypeError, match=r"prepare\(\) must start the coordinator and the runtime"):
    session_lib.run(Lazy(), plan, _NoOptions(), grace_period=1.0, handle_signals=False)

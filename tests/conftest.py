"""Shared pytest configuration: the launchpad test fixtures (`lp_launch`),
signal handlers put back after each test (launchers install their own), and
a bounded exit once the session ends."""

import faulthandler
import signal
import sys
import threading
import traceback

import psutil
import pytest

pytest_plugins = ["launchpad.testing"]

# How long the test process may take to exit once the session has ended.
# Past this, whatever holds the interpreter open (a thread that never ends,
# a child that atexit joins) gets every thread's stack printed, and the
# process exits with status 1 instead of hanging CI.
EXIT_SECONDS = 120


@pytest.fixture(autouse=True)
def restore_signal_handlers():
  """Launchers install SIGINT/SIGTERM handlers in the main thread; undo them."""
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  yield
  for sig, handler in previous.items():
    signal.signal(sig, handler)


def pytest_unconfigure(config: pytest.Config) -> None:
  """Names the threads and child processes the tests left behind (each is a
  leak to fix), ends those children, and bounds the time left to exit."""
  main = threading.main_thread()
  threads = [t.name for t in threading.enumerate() if t is not main and not t.daemon]
  children = [c for c in psutil.Process().children(recursive=True) if not _stdlib_helper(c)]
  if threads or children:
    names = ", ".join(f"{c.pid} {_name(c)}" for c in children) or "none"
    print(
      f"\nconftest: left running after the tests: threads {threads or 'none'} (not daemon); "
      f"child processes {names}",
      file=sys.stderr,
    )
  frames = sys._current_frames()
  for thread in threading.enumerate():
    if thread is not main and not thread.daemon and thread.ident in frames:
      stack = "".join(traceback.format_stack(frames[thread.ident]))
      print(f"conftest: thread {thread.name!r} is at:\n{stack}", file=sys.stderr)
  for child in children:
    try:
      child.kill()
    except psutil.NoSuchProcess:
      pass
  faulthandler.dump_traceback_later(EXIT_SECONDS, exit=True)


def _stdlib_helper(process: psutil.Process) -> bool:
  """multiprocessing's resource tracker or fork server: they end with this process."""
  try:
    return any("from multiprocessing." in part for part in process.cmdline())
  except psutil.Error:
    return True


def _name(process: psutil.Process) -> str:
  try:
    return " ".join(process.cmdline()[:4])
  except psutil.Error:
    return "?"

"""Keeps the launching process alive until the programs it launched end.

Launchpad lets a main return right after `lp.launch(program)` (Acme's mains
do) and keeps the process alive until the program ends. Python begins to
shut down as soon as the main module's code ends: from then on a thread can
no longer register an exit hook (a local_mt node creating a
ThreadPoolExecutor fails: "can't register atexit after shutdown"), and on
Python 3.12.0-3.12.1 no thread can start at all, not even the launchers'
own. So the main thread is held back before that:

- Python 3.12 and later: `sys.monitoring` reports the return of the
  `__main__` module's code, or its unwinding (`sys.exit()` included), and
  the callback waits there, before anything of the shutdown has begun.
- Python 3.11: a `threading` exit hook, Launchpad's own way, registered
  after `concurrent.futures` made its own, so it runs first; by then Python
  has begun to shut down, but threads still start.

The wait happens however the main code ended (an exception in it is shown
once the programs have ended; Ctrl-C stops them). Then the process exits
with status 1 if a program that was still running failed, else as the main
code said. The hook is armed only while a program runs, and only on a
script's main module (not in an interactive session).
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import TYPE_CHECKING

from launchpad import context

if TYPE_CHECKING:
  from launchpad.launch.controller import Controller

log = logging.getLogger(__name__)

# sys.monitoring tool ids a hook may take (2 is the profilers', 0, 1 and 5
# debuggers', coverage's and optimizers').
_TOOL_IDS = (3, 4)


class ProcessLifetime:
  """The programs this process launched, and the hook that waits for them."""

  def __init__(self) -> None:
    self._lock = threading.Lock()
    self._running: dict[object, Callable[[], bool]] = {}
    self._idle = threading.Event()
    self._idle.set()
    self._hook: _Hook | None = None
    self._atexit_registered = False

  def watch(self, controller: Controller) -> None:
    """Keeps this process alive until `controller`'s program has ended."""
    self.started(controller, lambda: bool(controller.failures()))

    def ended_when_done() -> None:
      controller.wait(raise_error=False)
      self.ended(controller)

    threading.Thread(
      target=ended_when_done, name=f"{controller.program}-lifetime", daemon=True
    ).start()

  def started(self, program: object, failed: Callable[[], bool]) -> None:
    """`program` runs; `failed()` tells, once it ended, whether it failed."""
    with self._lock:
      self._running[program] = failed
      self._idle.clear()
      if self._hook is None:
        self._hook = self._arm()

  def ended(self, program: object) -> None:
    with self._lock:
      self._running.pop(program, None)
      if self._running:
        return
      self._idle.set()
      hook, self._hook = self._hook, None
    if hook is not None:
      hook.disarm()

  def _arm(self) -> _Hook | None:
    if sys.version_info >= (3, 12):
      code = main_module_code()
      return _Hook.arm(code, self.wait_at_exit) if code is not None else None
    if not self._atexit_registered:
      threading._register_atexit(self._wait_at_threading_exit)
      self._atexit_registered = True
    return None

  def wait_at_exit(self) -> bool:
    """Waits, in the main thread, for the programs running now; True if one failed."""
    with self._lock:
      programs = dict(self._running)
    if not programs:
      return False
    log.info("the main code has ended; waiting for the running programs to end")
    context.wait_event(self._idle, None)
    return any(failed() for failed in programs.values())

  def _wait_at_threading_exit(self) -> None:
    if self.wait_at_exit():
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)


class _Hook:
  """sys.monitoring callbacks on the end of the main module's code."""

  def __init__(self, tool: int, code: CodeType, wait: Callable[[], bool]):
    self._tool = tool
    self._code = code
    self._wait = wait
    self._done = False

  @classmethod
  def arm(cls, code: CodeType, wait: Callable[[], bool]) -> _Hook | None:
    monitoring = sys.monitoring
    for tool in _TOOL_IDS:
      if monitoring.get_tool(tool) is None:
        break
    else:
      log.warning(
        "every sys.monitoring tool id launchpad may use is taken: a main that returns right "
        "after lp.launch may end the process under its running program; call wait() on the "
        "controller lp.launch returns."
      )
      return None
    hook = cls(tool, code, wait)
    events = monitoring.events
    monitoring.use_tool_id(tool, "launchpad")
    monitoring.register_callback(tool, events.PY_RETURN, hook._on_return)
    monitoring.register_callback(tool, events.PY_UNWIND, hook._on_unwind)
    monitoring.set_local_events(tool, code, events.PY_RETURN)
    monitoring.set_events(tool, events.PY_UNWIND)  # unwinding is a global event only
    return hook

  def disarm(self) -> None:
    monitoring = sys.monitoring
    events = monitoring.events
    monitoring.set_events(self._tool, 0)
    monitoring.set_local_events(self._tool, self._code, 0)
    monitoring.register_callback(self._tool, events.PY_RETURN, None)
    monitoring.register_callback(self._tool, events.PY_UNWIND, None)
    monitoring.free_tool_id(self._tool)

  def _on_return(self, code: CodeType, offset: int, value: object) -> None:
    if code is self._code:
      self._main_ended(exit_code=0)

  def _on_unwind(self, code: CodeType, offset: int, error: BaseException) -> None:
    if code is self._code:
      if not isinstance(error, SystemExit):
        log.warning("the main code raised %r; it is shown once the programs have ended", error)
      self._main_ended(exit_code=error.code if isinstance(error, SystemExit) else 1)

  def _main_ended(self, exit_code: object) -> None:
    if self._done or threading.current_thread() is not threading.main_thread():
      return
    self._done = True
    if self._wait() and exit_code in (0, None):
      raise SystemExit(1)


def main_module_code() -> CodeType | None:
  """The code of the script's main module, as the main thread runs it: its
  outermost frame, or the one `python -m` (runpy) runs; None in an
  interactive session or an embedded interpreter."""
  frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident)
  outermost = None
  while frame is not None:
    name = frame.f_globals.get("__name__")
    if name == "__main__" and frame.f_code.co_name == "<module>":
      outermost = frame
    elif name != "runpy" and outermost is not None:
      outermost = None  # something other than runpy runs it: not the script's main
    frame = frame.f_back
  return None if outermost is None else outermost.f_code


process = ProcessLifetime()

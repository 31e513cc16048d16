"""What a process knows of the program it runs, and the stop API of nodes.

A `ProgramRuntime` exists once per process per launched program: it holds the
program's control (a gRPC client of the coordinator, or the coordinator itself
in its own process) and secret, and a watcher that turns the
coordinator's stop into a local event. Node threads also carry a
`NodeContext` naming the node, for error messages and reports.

`lp.stop()` and friends look for the runtime of the calling thread's node and
fall back to the single program running in this process, so they work from
any thread a node starts, not only its main one.

Stop handlers run in a thread of the runtime, once the coordinator knows of
the stop and no `lp.stop()` of this process is still telling it: a handler
may raise an exception into a node's thread (Acme's runtime_terminator
raises SystemExit there), and that must never land inside a control-plane
call or while launchpad holds a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from launchpad import errors, flags, stats
from launchpad.tls import TlsConfig

if TYPE_CHECKING:
  from launchpad.control.client import Control

log = logging.getLogger(__name__)

_local = threading.local()
_runtimes: list[ProgramRuntime] = []
_runtimes_lock = threading.Lock()

# How long the handlers' thread waits for lp.stop() calls of this process to
# finish telling the coordinator, beyond their own deadline (the control
# client's CALL_SECONDS).
STOP_CALLS_MARGIN_SECONDS = 5.0
# How long a runtime that closes waits for its stop handlers to return.
HANDLERS_SECONDS = 60.0


class ProgramRuntime:
  """A launched program as seen from one process."""

  def __init__(
    self,
    program: str,
    control: Control,
    secret: bytes,
    host: str = "127.0.0.1",
    source: object = None,
    tls: TlsConfig | None = None,
  ):
    self.program = program
    self.secret = secret
    self.host = host  # the interface node servers bind
    self.source = source  # the Program object, in the process that launched it
    self.tls = tls  # TLS settings for connections between hosts, if the launch uses TLS
    self.control = control  # the coordinator's calls
    # Its caller loaded the control plane's RPC stack; building a program never does.
    from launchpad.control import client as control_client

    self._stop_calls_seconds = control_client.CALL_SECONDS + STOP_CALLS_MARGIN_SECONDS
    self.stop_event = threading.Event()
    self.stop_reason = ""
    # True once this process's stop handlers have begun to run.
    self.stop_handlers_started = False
    self._lock = threading.Lock()
    self._stop_calls_done = threading.Condition(self._lock)
    self._stop_calls = 0  # lp.stop() calls of this process telling the coordinator
    self._handler_threads: list[threading.Thread] = []
    self._closed = threading.Event()
    # Handlers registered while no program ran here are this program's now.
    self._handlers: list[Callable[[], None]] = process_handlers.take()
    with _runtimes_lock:
      _runtimes.append(self)
    self._watcher = threading.Thread(target=self._watch, name=f"{program}-stop-watch", daemon=True)
    self._watcher.start()
    # CPU, memory and node counters of this process, for `lp status --watch`.
    self.stats = stats.Reporter(self.control)
    self.stats.start()

  def request_stop(self, reason: str) -> None:
    """Stops the whole program, from any process of it: tells the coordinator
    first, then this process. Returns at once if the stop has begun here."""
    with self._lock:
      if self.stop_event.is_set():
        return
      self._stop_calls += 1
    try:
      try:
        self.control.stop(reason)
      except errors.ProgramStoppedError:
        pass  # the coordinator is gone: the program is over anyway
      self._stopped(reason)
    finally:
      with self._lock:
        self._stop_calls -= 1
        self._stop_calls_done.notify_all()

  def register_stop_handler(self, handler: Callable[[], None]) -> None:
    """Calls `handler()` once when the program stops (soon, in a thread of
    this runtime, if it has begun to)."""
    with self._lock:
      self._handlers.append(handler)
      stopping = self.stop_event.is_set()
    if stopping:
      self._start_handlers()

  def unregister_stop_handler(self, handler: Callable[[], None]) -> None:
    """Removes `handler` if it is registered and has not run yet."""
    with self._lock:
      if handler in self._handlers:
        self._handlers.remove(handler)

  def close(self) -> None:
    """Forgets this runtime; called when the program has ended in this process.
    Runs the stop handlers that have not run, and waits up to
    HANDLERS_SECONDS for those still running."""
    self._closed.set()
    self._stopped("the program ended")
    self._start_handlers()  # the watcher may still be polling a coordinator that knows of no stop
    deadline = time.monotonic() + HANDLERS_SECONDS
    with self._lock:
      threads = list(self._handler_threads)
    for thread in threads:
      thread.join(max(0.0, deadline - time.monotonic()))
      if thread.is_alive():
        log.warning(
          "program %s: stop handlers still run %g s after the program ended; leaving them",
          self.program,
          HANDLERS_SECONDS,
        )
        break
    with _runtimes_lock:
      if self in _runtimes:
        _runtimes.remove(self)
    self.stats.stop()
    self.control.close()

  def _watch(self) -> None:
    """Waits for the coordinator's stop (or its loss), then runs the stop
    handlers in this thread, which holds nothing else at that point."""
    self._stopped(self._stop_news())
    self._run_handlers()

  def _stop_news(self) -> str:
    """Why the program stops, once it does (or the coordinator is gone, or
    this runtime closed)."""
    while not self._closed.is_set():
      try:
        state = self.control.wait_stop(timeout=30.0)
      except errors.ProgramStoppedError as e:
        return str(e)
      except Exception:
        log.exception("program %s: the stop watcher failed to poll; retrying", self.program)
        self._closed.wait(1.0)
        continue
      if state.stopping:
        return state.reason
    return "the program ended"

  def _stopped(self, reason: str) -> None:
    """Marks the program as stopping here; the watcher runs the handlers."""
    with self._lock:
      if self.stop_event.is_set():
        return
      self.stop_reason = reason
      self.stop_event.set()

  def _start_handlers(self) -> None:
    """Runs the handlers not run yet in a thread of their own."""
    thread = threading.Thread(
      target=self._run_handlers, name=f"{self.program}-stop-handlers", daemon=True
    )
    with self._lock:  # started under the lock: close() joins only started threads
      thread.start()
      self._handler_threads.append(thread)

  def _run_handlers(self) -> None:
    """Runs the registered handlers, each once, holding no lock, once no
    lp.stop() of this process is telling the coordinator."""
    with self._lock:
      if not self._stop_calls_done.wait_for(
        lambda: self._stop_calls == 0, self._stop_calls_seconds
      ):
        log.warning(
          "program %s: lp.stop() did not reach the coordinator within %g s; running stop "
          "handlers anyway",
          self.program,
          self._stop_calls_seconds,
        )
      self.stop_handlers_started = True
    while True:
      with self._lock:
        if not self._handlers:
          return
        handler = self._handlers.pop(0)
      _call_handler(handler, f"program {self.program}")


def _call_handler(handler: Callable[[], None], where: str) -> None:
  try:
    handler()
  except BaseException:  # a stop handler that raised SystemExit too: the others still run
    log.exception("a stop handler of %s raised", where)


class ProcessStopHandlers:
  """Stop handlers registered while no program runs in this process.

  Launchpad accepts them (Acme's single-process EnvironmentLoop registers
  one): they run once, on the first SIGINT or SIGTERM (which then does
  nothing else; a second one acts as before), or when the next program
  launched in this process stops, whichever comes first. Catching the
  signals needs the main thread; handlers registered from another thread
  wait for a program.
  """

  def __init__(self) -> None:
    self._lock = threading.RLock()  # the signal handler takes it in the main thread
    self._handlers: list[Callable[[], None]] = []
    self._previous: dict[int, object] = {}

  def register(self, handler: Callable[[], None]) -> None:
    with self._lock:
      self._handlers.append(handler)
      if self._previous or threading.current_thread() is not threading.main_thread():
        return
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def unregister(self, handler: Callable[[], None]) -> None:
    with self._lock:
      if handler in self._handlers:
        self._handlers.remove(handler)
      if not self._handlers:
        self.take()

  def take(self) -> list[Callable[[], None]]:
    """The handlers, which are no longer this registry's; signals behave as
    before (once the main thread calls this)."""
    with self._lock:
      handlers, self._handlers = self._handlers, []
      if self._previous and threading.current_thread() is threading.main_thread():
        for sig, handler in self._previous.items():
          if signal.getsignal(sig) == self._on_signal:
            signal.signal(sig, handler)
        self._previous = {}
    return handlers

  def _on_signal(self, signum: int, frame: object) -> None:
    previous = self._previous.get(signum)
    handlers = self.take()
    if handlers:
      threading.Thread(
        target=lambda: [_call_handler(h, "this process") for h in handlers],
        name="launchpad-stop-handlers",
        daemon=True,
      ).start()
      if previous is signal.default_int_handler:
        return  # the stop handlers are what Ctrl-C does, as in Launchpad
    if callable(previous):
      previous(signum, frame)
    elif previous == signal.SIG_DFL and not handlers:
      signal.raise_signal(signum)  # restored by take(): acts as if never caught


process_handlers = ProcessStopHandlers()


@dataclasses.dataclass(frozen=True)
class NodeContext:
  """The node a thread runs, and its program."""

  name: str
  runtime: ProgramRuntime


def set_node(context: NodeContext | None) -> None:
  """Marks the calling thread as running `context.name`."""
  _local.node = context


def current_node() -> NodeContext | None:
  return getattr(_local, "node", None)


def current_runtime(source: object = None) -> ProgramRuntime:
  """The program of the calling thread's node, else the one program running here.

  Args:
    source: a Program object: in the launching process, picks the runtime of
      the launch of that program when several programs run.
  """
  runtime = running_runtime(source)
  if runtime is None:
    raise errors.LaunchpadError(
      "no launchpad program runs in this process: call this inside a node, or "
      "after lp.launch(program) in the launching process."
    )
  return runtime


def running_runtime(source: object = None) -> ProgramRuntime | None:
  """Like `current_runtime`, but None when no program runs in this process."""
  node = current_node()
  if node is not None:
    return node.runtime
  with _runtimes_lock:
    runtimes = list(_runtimes)
  if source is not None and len(runtimes) > 1:
    runtimes = [r for r in runtimes if r.source is source] or runtimes
  if len(runtimes) <= 1:
    return runtimes[0] if runtimes else None
  raise errors.LaunchpadError(
    f"{len(runtimes)} programs run in this process ({', '.join(r.program for r in runtimes)}) "
    "and this thread belongs to none of them: call this from a node's thread, "
    "or stop the other programs first."
  )


def stop() -> None:
  """Stops the program this code runs in; callable from any thread of any node."""
  runtime = current_runtime()
  node = current_node()
  runtime.request_stop(f"lp.stop() called in {node.name if node else 'the launching process'}")


def stop_event() -> threading.Event:
  """An event set when the program is stopping."""
  return current_runtime().stop_event


def wait_for_stop(timeout_secs: float | None = None, *, timeout: float | None = None) -> bool:
  """Blocks until the program is stopping or the timeout passes.

  Args:
    timeout_secs: seconds to wait at most (Launchpad's name); None: no limit.
    timeout: the same, by this library's name; give one of the two.

  Returns True if the program is stopping, False on timeout.
  """
  if timeout_secs is not None and timeout is not None:
    raise TypeError("lp.wait_for_stop: give timeout_secs or timeout, not both.")
  return wait_event(current_runtime().stop_event, timeout if timeout is not None else timeout_secs)


# How long the main thread sleeps at a time in wait_event.
MAIN_THREAD_SLICE_SECONDS = 0.1


def wait_event(event: threading.Event, timeout: float | None) -> bool:
  """`event.wait(timeout)`, except that the main thread wakes up every
  MAIN_THREAD_SLICE_SECONDS: the kernel may hand a Ctrl-C or SIGTERM to
  another thread (gRPC's, say), and then Python runs its handler only when
  the main thread next runs, which a long wait would put off to its end."""
  if threading.current_thread() is not threading.main_thread():
    return event.wait(timeout)
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
      return event.is_set()
    slice_seconds = MAIN_THREAD_SLICE_SECONDS
    if event.wait(slice_seconds if remaining is None else min(remaining, slice_seconds)):
      return True


def register_stop_handler(handler: Callable[[], None]) -> None:
  """Calls `handler()` once when the program stops, in a thread of launchpad's
  (soon, if the stop has begun).

  With no program running in this process, as Launchpad allows, the handler
  runs on the first SIGINT or SIGTERM, or when the next program launched
  here stops (ProcessStopHandlers).
  """
  if not callable(handler):
    raise TypeError(f"lp.register_stop_handler takes a function of no arguments, got {handler!r}.")
  runtime = running_runtime()
  if runtime is None:
    process_handlers.register(handler)
  else:
    runtime.register_stop_handler(handler)


def unregister_stop_handler(handler: Callable[[], None]) -> None:
  """Removes a handler added with `register_stop_handler`; one that is not
  registered (or has run) is ignored, as in Launchpad."""
  runtime = running_runtime()
  if runtime is None:
    process_handlers.unregister(handler)
  else:
    runtime.unregister_stop_handler(handler)


def make_program_stopper(launch_type: str | flags.LaunchType) -> Callable[[], None]:
  """Launchpad's `make_program_stopper`: a function that stops the running
  program. Every launch type stops the same way here, so it is `lp.stop`."""
  flags.is_local_launch(launch_type)  # a ValueError naming the known ones if unknown
  if getattr(launch_type, "value", launch_type) in ("local_docker", "vertex_ai"):
    raise errors.LaunchpadError(
      f"make_program_stopper({launch_type!r}): xmanager launch types do not run here; "
      "programs of every other launch type stop with lp.stop()."
    )
  return stop

"""What a process knows of the program it runs, and the stop API of nodes.

A `ProgramRuntime` exists once per process per launched program: it holds the
program's control client and secret, and a watcher that turns the
coordinator's stop into a local event and runs stop handlers. Node threads
also carry a `NodeContext` naming the node, for error messages and reports.

`lp.stop()` and friends look for the runtime of the calling thread's node and
fall back to the single program running in this process, so they work from
any thread a node starts, not only its main one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from launchpad import errors, stats
from launchpad.control.client import ControlClient
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

_local = threading.local()
_runtimes: list[ProgramRuntime] = []
_runtimes_lock = threading.Lock()


class ProgramRuntime:
  """A launched program as seen from one process."""

  def __init__(
    self,
    program: str,
    control_address: str,
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
    self.control = ControlClient(control_address, secret, tls=tls)
    self.stop_event = threading.Event()
    self.stop_reason = ""
    self._handlers: list[Callable[[], None]] = []
    self._lock = threading.Lock()
    self._closed = threading.Event()
    with _runtimes_lock:
      _runtimes.append(self)
    self._watcher = threading.Thread(target=self._watch, name=f"{program}-stop-watch", daemon=True)
    self._watcher.start()
    # CPU, memory and node counters of this process, for `lp status --watch`.
    self.stats = stats.Reporter(self.control)
    self.stats.start()

  def request_stop(self, reason: str) -> None:
    """Stops the whole program, from any process of it."""
    try:
      self.control.stop(reason)
    except errors.ProgramStoppedError:
      pass  # the coordinator is gone: the program is over anyway
    self._stopped(reason)

  def register_stop_handler(self, handler: Callable[[], None]) -> None:
    with self._lock:
      if not self.stop_event.is_set():
        self._handlers.append(handler)
        return
    handler()

  def unregister_stop_handler(self, handler: Callable[[], None]) -> None:
    with self._lock:
      try:
        self._handlers.remove(handler)
      except ValueError:
        raise ValueError(f"{handler!r} is not a registered stop handler.") from None

  def close(self) -> None:
    """Forgets this runtime; called when the program has ended in this process."""
    self._closed.set()
    self._stopped("the program ended")
    with _runtimes_lock:
      if self in _runtimes:
        _runtimes.remove(self)
    self.stats.stop()
    self.control.close()

  def _watch(self) -> None:
    while not self._closed.is_set():
      try:
        state = self.control.wait_stop(timeout=30.0)
      except errors.ProgramStoppedError as e:
        if not self._closed.is_set():
          self._stopped(str(e))
        return
      except Exception:
        log.exception("program %s: the stop watcher failed to poll; retrying", self.program)
        self._closed.wait(1.0)
        continue
      if state.stopping:
        self._stopped(state.reason)
        return

  def _stopped(self, reason: str) -> None:
    with self._lock:
      if self.stop_event.is_set():
        return
      self.stop_reason = reason
      self.stop_event.set()
      handlers, self._handlers = self._handlers, []
    for handler in handlers:
      try:
        handler()
      except Exception:
        log.exception("a stop handler of program %s raised", self.program)


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
  node = current_node()
  if node is not None:
    return node.runtime
  with _runtimes_lock:
    runtimes = list(_runtimes)
  if source is not None and len(runtimes) > 1:
    runtimes = [r for r in runtimes if r.source is source] or runtimes
  if len(runtimes) == 1:
    return runtimes[0]
  if not runtimes:
    raise errors.LaunchpadError(
      "no launchpad program runs in this process: call this inside a node, or "
      "after lp.launch(program) in the launching process."
    )
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


def wait_for_stop(timeout: float | None = None) -> bool:
  """Blocks until the program is stopping or `timeout` seconds pass.

  Returns True if the program is stopping, False on timeout.
  """
  return wait_event(current_runtime().stop_event, timeout)


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
  """Calls `handler()` once when the program stops (at once if it already has)."""
  current_runtime().register_stop_handler(handler)


def unregister_stop_handler(handler: Callable[[], None]) -> None:
  """Removes a handler added with `register_stop_handler`."""
  current_runtime().unregister_stop_handler(handler)

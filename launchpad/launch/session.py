"""One launch, from set-up to clean-up, the same for every launcher.

`run(launcher, plan, options, ...)` is the whole lifecycle of a launch:

1. the launcher's `prepare(session, options)` asks the session for what it
   needs (a run directory, the coordinator, this process's runtime, and
   anything of its own, each with its clean-up) and returns its `Workers`;
2. the session makes the controller, starts the workers and hands the
   supervision to a thread of the controller;
3. when the program is over, the supervisor closes the session: every
   clean-up runs once, newest first (workers, runtime, coordinator, output,
   run directory).

If anything fails before supervision starts (a host that cannot be reached,
a node that cannot start, Ctrl-C), the session closes at once, in the same
order, and the error goes to the caller: no coordinator, thread or run
directory that reads as running is left behind.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from launchpad import runs
from launchpad.launch.plan import Plan
from launchpad.tls import TlsConfig

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime
  from launchpad.control.coordinator import Coordinator
  from launchpad.launch.controller import Controller, Workers

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class Launcher(Protocol):
  """What a launcher is: where and how the workers of a plan run.

  Attributes:
    options: the dataclass of this launcher's options; `lp.launch` fills it
      from its keyword arguments of the same names.
    single_host: every node runs on this host (lp.Address then binds
      loopback ports).
    nodes_travel: nodes are pickled to reach their workers (False only for
      launchers whose workers are threads of this process, which then honour
      `serialize_py_nodes=False`).

  A launcher whose options have a true `detach` field runs the whole
  program elsewhere, its launch session included: lp.launch then calls its
  `detach(plan, options)` instead of `run` (the Slurm launcher submits a
  batch job that runs the launcher), and returns what that gives.
  """

  options: type
  single_host: bool
  nodes_travel: bool

  def prepare(self, session: Session, options: Any) -> Workers:
    """Sets up what the workers need through `session` and returns them, not yet started."""


class Session:
  """The pieces of one launch, and their clean-ups."""

  def __init__(self, plan: Plan):
    self.plan = plan
    self.coordinator: Coordinator | None = None
    self.runtime: ProgramRuntime | None = None
    self.run: runs.Run | None = None
    self._cleanups: list[tuple[str, Callable[[], None]]] = []
    self._closed = False

  def on_close(self, what: str, cleanup: Callable[[], None]) -> None:
    """Runs `cleanup()` when the session closes, before the clean-ups added earlier."""
    self._cleanups.append((what, cleanup))

  def create_run(self, log_dir: pathlib.Path | None = None) -> runs.Run:
    """The run directory: node logs, and what `lp status` reads."""
    self.run = runs.create(self.plan.program, log_dir)
    self.on_close("the run directory", self.run.finish)
    return self.run

  def start_coordinator(self, host: str = LOOPBACK, tls: TlsConfig | None = None) -> str:
    """Starts the program's coordinator, listening on `host`; returns the
    address it listens on, "host:port".

    On loopback (the default) that is the address workers on this machine
    dial. Listening on every interface ("[::]", "0.0.0.0"), for workers on
    other machines, it is no address they can dial: give them this
    machine's address as they reach it, with the port of the one returned
    (`address.rpartition(":")[2]`), as the ssh, ray and slurm launchers do.
    """
    from launchpad.control.coordinator import Coordinator

    plan = self.plan
    self.coordinator = Coordinator(plan.program, plan.node_names, plan.secret, host=host, tls=tls)
    address = self.coordinator.start()
    self.on_close("the coordinator", self.coordinator.close)
    return address

  def start_runtime(self, address: str, tls: TlsConfig | None = None) -> ProgramRuntime:
    """This process's view of the program (lp.stop() here), which calls the
    session's coordinator directly; the coordinator's `address` for other
    processes is written to the run directory if there is one."""
    from launchpad.context import ProgramRuntime
    from launchpad.control.local import LocalControl

    plan = self.plan
    if self.coordinator is None:
      raise TypeError("session.start_runtime(): start the coordinator first (start_coordinator()).")
    if self.run is not None:
      self.run.write(address, plan.secret, tls)
    control = LocalControl(self.coordinator)
    self.runtime = ProgramRuntime(plan.program, control, plan.secret, source=plan.source, tls=tls)
    self.on_close("the runtime", self.runtime.close)
    return self.runtime

  def close(self) -> None:
    """Runs every clean-up once, newest first; one that fails is logged and
    does not keep the others from running."""
    if self._closed:
      return
    self._closed = True
    while self._cleanups:
      what, cleanup = self._cleanups.pop()
      try:
        cleanup()
      except Exception:
        log.exception("program %s: closing %s failed", self.plan.program, what)


def run(
  launcher: Launcher, plan: Plan, options: Any, grace_period: float, handle_signals: bool
) -> Controller:
  """Launches `plan` with `launcher` and returns its controller once every
  worker is started; the session closes when the program is over."""
  from launchpad.launch.controller import Controller

  session = Session(plan)
  try:
    workers = launcher.prepare(session, options)
    if session.coordinator is None or session.runtime is None:
      raise TypeError(
        f"launcher {type(launcher).__name__}: prepare() must start the coordinator and the "
        "runtime (session.start_coordinator(), session.start_runtime())."
      )
    controller = Controller(
      plan,
      session.coordinator,
      session.runtime,
      workers,
      grace_period,
      run_dir=session.run.path if session.run is not None else None,
    )
    workers.start_all()
    controller.start_supervisor(handle_signals, session.close)
  except BaseException:
    session.close()
    raise
  return controller

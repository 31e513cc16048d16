"""The controller of a launched program: wait for it, stop it, see its failures.

Written once for every launcher. A launcher supplies its `Workers` (how to
wait for them and how to force them); the controller applies the stop
policy: on a stop request, nodes get `grace_period` seconds to end by
themselves, then are killed.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from launchpad import context, errors, restarts
from launchpad.context import ProgramRuntime
from launchpad.control import control_pb2, failures
from launchpad.control import metrics as metrics_lib
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator, NodeRecord
from launchpad.launch import signals
from launchpad.launch.plan import Plan

log = logging.getLogger(__name__)


class Workers(Protocol):
  """What a launcher runs nodes in: threads, processes, actors, Slurm tasks.

  A launcher supplies only this (and its options): the launch session
  (session.py) starts them, and the controller supervises them.
  """

  def start_all(self) -> None:
    """Starts every node of the plan (once, at launch)."""

  def start(self, name: str) -> None:
    """Starts node `name` again after it failed (the restart policy's call)."""

  def join(self, timeout: float) -> bool:
    """Waits up to `timeout` seconds for every worker to exit; True if they did."""

  def kill(self, names: list[str]) -> None:
    """Forces the workers running these nodes to end."""


class Controller:
  """Returned by `lp.launch`: `wait()`, `stop()`, and a context manager."""

  def __init__(
    self,
    plan: Plan,
    coordinator: Coordinator,
    runtime: ProgramRuntime,
    workers: Workers,
    grace_period: float,
    run_dir: pathlib.Path | None = None,
  ):
    self.program = plan.program
    self._worker_names = [worker.name for worker in plan.workers]
    self.run_dir = run_dir  # where process launchers keep node logs
    self._coordinator = coordinator
    self._runtime = runtime
    self._workers = workers
    self._grace_period = grace_period
    self._done = threading.Event()
    self._failure_raised = False
    restarter = restarts.Restarter(coordinator, plan.restart_policies, workers.start)
    coordinator.set_failure_policy(restarter.on_failure)
    if run_dir is not None:  # every lp.report also lands in the run's metrics.jsonl
      coordinator.add_metrics_listener(metrics_lib.MetricsFile(run_dir).write)

  @property
  def stopped_by(self) -> int | None:
    """The signal that stopped the program, if one did: Ctrl-C or SIGTERM to
    the launcher, or a Slurm job's notice of its time limit or preemption."""
    return self._coordinator.stop_signal

  @property
  def done(self) -> bool:
    """True once the program is over."""
    return self._done.is_set()

  def start_supervisor(
    self, handle_signals: bool, cleanup: Callable[[], None] = lambda: None
  ) -> None:
    """Runs `supervise` in a thread that keeps the process alive until the
    program is over, then `cleanup()` (the launch session's close: workers,
    runtime, coordinator, run directory); the program counts as done after
    that. Call it once the nodes are started.

    With `handle_signals`: Ctrl-C and SIGTERM stop the program gracefully
    (when called from the main thread), a second one kills every worker and
    exits at once; and a failure found when the main thread has already
    returned ends the process with status 1: nobody is left to raise it to.
    """
    if handle_signals and threading.current_thread() is threading.main_thread():
      signals.install(
        self, self._coordinator, on_second=lambda: self._workers.kill(self._worker_names)
      )

    def run():
      self.supervise()
      cleanup()
      self._done.set()
      if handle_signals and self.failures() and not threading.main_thread().is_alive():
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=run, name=f"{self.program}-supervisor").start()

  def supervise(self) -> None:
    """Runs the stop policy until the program is over."""
    coordinator = self._coordinator
    coordinator.wait_until(lambda: coordinator.stop_reason is not None, None)
    if not coordinator.wait_until(coordinator.all_ended, self._grace_period):
      stuck = self._running_nodes()
      log.warning(
        "program %s: nodes %s did not end within the %.3g s grace period after the stop; "
        "forcing them",
        self.program,
        ", ".join(stuck),
        self._grace_period,
      )
      self._workers.kill(stuck)
    if not self._workers.join(5.0):
      log.warning("program %s: some workers did not exit after their nodes ended", self.program)

  def wait(
    self,
    labels_to_wait_for: Sequence[str] | float | None = None,
    raise_error: bool = True,
    return_on_first_completed: bool = False,
    *,
    timeout: float | None = None,
  ) -> bool:
    """Blocks until the program is over; False if `timeout` seconds passed first.

    Launchpad's arguments: with `labels_to_wait_for` (group labels), only
    until those groups' nodes have ended, or the first of them with
    `return_on_first_completed`; `raise_error=False` leaves failures
    unraised. A number as first argument is the timeout: `wait(10)`.

    Raises:
      NodeFailedError: a node failed; the first failure, with its traceback.
    """
    if isinstance(labels_to_wait_for, int | float) and not isinstance(labels_to_wait_for, bool):
      timeout, labels_to_wait_for = labels_to_wait_for, None
    if labels_to_wait_for is None and not return_on_first_completed:
      ended = context.wait_event(self._done, timeout)
    else:
      ended = self._wait_for_nodes(labels_to_wait_for, return_on_first_completed, timeout)
    if ended and raise_error:
      self.raise_failure()
    return ended

  def _wait_for_nodes(
    self, labels: Sequence[str] | None, first: bool, timeout: float | None
  ) -> bool:
    """Waits until every node of `labels` (all nodes if None) has ended, or
    the first of them; the main thread wakes up every slice, for signals."""
    names = self._nodes_of(labels)
    records = [self._coordinator.nodes[name] for name in names]

    def ended() -> bool:
      states = [r.state in (FINISHED, FAILED) for r in records]
      return any(states) if first else all(states)

    deadline = None if timeout is None else time.monotonic() + timeout
    main = threading.current_thread() is threading.main_thread()
    while True:
      remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
      if main:
        remaining = (
          context.MAIN_THREAD_SLICE_SECONDS
          if remaining is None
          else min(remaining, context.MAIN_THREAD_SLICE_SECONDS)
        )
      if self._coordinator.wait_until(ended, remaining) or ended():
        return True
      if deadline is not None and time.monotonic() >= deadline:
        return False

  def _nodes_of(self, labels: Sequence[str] | None) -> list[str]:
    """The nodes of the groups `labels` (a label alone is one group)."""
    names = list(self._coordinator.nodes)
    if labels is None:
      return names
    labels = [labels] if isinstance(labels, str) else list(labels)
    known = {name.split("[", 1)[0] for name in names}
    unknown = [label for label in labels if label not in known]
    if unknown:
      raise ValueError(
        f"controller.wait: program {self.program} has no group {', '.join(map(repr, unknown))}; "
        f"its groups are: {', '.join(sorted(known))}."
      )
    return [name for name in names if name.split("[", 1)[0] in labels]

  def stop(self, timeout: float | None = None) -> None:
    """Stops the program and waits for it to end (the grace period, then force).

    Failures are not raised here; `wait()` and `raise_failure()` raise them.
    """
    if not self._done.is_set():
      self._coordinator.request_stop("the launcher's controller.stop() was called")
    wait = self._grace_period + 10.0 if timeout is None else timeout
    if not context.wait_event(self._done, wait):
      raise errors.CallTimeoutError(
        f"program {self.program} did not end within {wait:.3g} s of stop(): nodes "
        f"{', '.join(self._running_nodes()) or '(none; their workers did not exit)'} are "
        "stuck where neither the stop nor a kill reaches them (a thread of the threads "
        "launcher cannot be killed); give stop() a longer timeout or end them yourself."
      )

  def status(self) -> control_pb2.StatusReply:
    """Every node's state, pid, host and restarts, and the latest stats its
    process reported (what `lp status` shows)."""
    return self._coordinator.status()

  def metrics(self, since: int = 0, timeout: float | None = 0.0) -> list[metrics_lib.Metrics]:
    """What the nodes reported with lp.report, in the order it came: the
    reports numbered `since` and after (ask next for the number after the
    last one returned), waiting up to `timeout` seconds (None: no limit) for
    one if there is none yet. Returns [] at once when there is none and every
    node has ended (`nodes_ended`): no report will come."""
    return self._coordinator.metrics.since(since, timeout, until=self.nodes_ended)

  def nodes_ended(self) -> bool:
    """True once the program is stopping and every node has ended; its
    processes may still be exiting (`done` says when they have)."""
    coordinator = self._coordinator
    return coordinator.stop_reason is not None and coordinator.all_ended()

  def _running_nodes(self) -> list[str]:
    """The nodes that have not ended yet."""
    return [r.name for r in self._coordinator.nodes.values() if r.state not in (FINISHED, FAILED)]

  def failures(self) -> list[NodeRecord]:
    """The nodes that failed, in the order they were added."""
    return self._coordinator.failures()

  def raise_failure(self, again: bool = True) -> None:
    """Raises NodeFailedError for the first failed node, if any failed.

    Args:
      again: False to stay silent if the failure was raised to the caller
        before (by `wait()` or this method); test teardowns use it.
    """
    failed = self.failures()
    if not failed or (self._failure_raised and not again):
      return
    first = failed[0]
    self._failure_raised = True
    error = errors.NodeFailedError(first.name, first.description, first.traceback)
    if first.exception is None:
      raise error from None
    raise error from failures.rebuild(first.exception, first.name, first.traceback)

  def __enter__(self) -> Controller:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.stop()
    if exc_type is None:
      self.raise_failure()

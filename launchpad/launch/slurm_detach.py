"""Detached Slurm runs: the whole program, its launcher included, in batch jobs.

`lp.launch(..., launch_type='slurm', detach=True)` writes the launch (the
plan, pickled, with the program secret) into a new run directory, which
only the user can read, and submits one batch job whose script is the
launcher (`main`). The call returns at once with a DetachedRun. In the job,
the launcher runs attached as it would on the login node: it submits the
nodes' jobs, holds the coordinator, and writes run.json with its address,
so that `lp status`, `lp top` and `lp stop` reach it from the login node
through the run directory on the shared filesystem. Its own output and
every node's lines go to launcher.log there, and each node's to its log.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import pathlib
import pickle
import shlex
import signal
import sys
import threading
from typing import Any

import cloudpickle

from launchpad import context, errors, private_files, runs
from launchpad.control import control_pb2
from launchpad.courier import serialization
from launchpad.launch import session, slurm, slurm_jobs
from launchpad.launch.plan import Plan
from launchpad.resources import SlurmResources, slurm_seconds

LAUNCH_FILE = "slurm-launch.pickle"
LOG_FILE = "launcher.log"
COMMAND = "from launchpad.launch import slurm_detach; slurm_detach.main()"


def submit(
  plan: Plan, jobs: list[slurm_jobs.Allocation], options: slurm.SlurmOptions
) -> DetachedRun:
  """Submits the launcher's job; returns once Slurm took it."""
  run = runs.create(plan.program, options.log_dir)
  launched = dataclasses.replace(plan, source=None)  # the definition stays here
  import_path = [p for p in sys.path if p]
  payload = serialization.cloudpickle_dumps((launched, options))
  private_files.write(run.path / LAUNCH_FILE, pickle.dumps((import_path, payload)))
  script = (
    "#!/bin/sh\nexec " + shlex.join([options.interpreter, "-c", COMMAND, str(run.path)]) + "\n"
  )
  launcher = slurm_jobs.Allocation(["(the launcher)"], _launcher_resources(options, jobs), ["-"])
  args = [
    f"--job-name=lp-{plan.program}",
    f"--output={run.path / LOG_FILE}",
    "--open-mode=append",  # a requeued launcher adds to the log
    "--requeue" if options.requeue else "--no-requeue",
    *slurm_jobs.preempt_option(options.preempt_signal),
    *launcher.sbatch_arguments(),
  ]
  slurm_jobs.check_accepted("the launcher's job", args, script)
  job_id = slurm_jobs.submit("the launcher's job", args, script)
  print(
    f"program {plan.program}: submitted as Slurm job {job_id}, run {run.name}. Its output: "
    f"{run.path / LOG_FILE}; `lp status {run.name}` once the job runs, `lp stop {run.name}` "
    "to stop it.",
    flush=True,
  )
  return DetachedRun(plan.program, job_id, run)


def _launcher_resources(
  options: slurm.SlurmOptions, jobs: list[slurm_jobs.Allocation]
) -> SlurmResources:
  """The launcher's job: as the options say; its time, if they give none,
  the longest of the jobs' if every job has one."""
  launcher = options.launcher_resources
  times = [job.resources.time for job in jobs]
  if launcher.time is None and times and all(t is not None for t in times):
    launcher = dataclasses.replace(launcher, time=max(times, key=slurm_seconds))
  return launcher


class DetachedRun:
  """What lp.launch returns for a detached Slurm run: the program runs in
  Slurm job `job_id`, not in this process. `wait()` returns at once; follow
  the run with `lp status RUN`, and its logs in `run_dir`."""

  def __init__(self, program: str, job_id: str, run: runs.Run):
    self.program = program
    self.job_id = job_id
    self.run_dir = run.path
    self.run_name = run.name
    self.stopped_by: int | None = None
    self._run = run

  @property
  def done(self) -> bool:
    """True: nothing of the program runs in this process."""
    return True

  def wait(self, *args: Any, **kwargs: Any) -> bool:
    """Returns True at once: the program runs on in its Slurm job."""
    return True

  def stop(self, timeout: float | None = None) -> None:
    """Stops the program gracefully through its coordinator, or cancels
    its job if it has not started yet."""
    if not (self.run_dir / "run.json").exists():
      slurm_jobs.cancel([self.job_id])
      return
    try:
      self._run.stop(f"DetachedRun.stop() of Slurm job {self.job_id}")
    except runs.RunError as e:
      raise errors.LaunchpadError(f"cannot stop run {self.run_name}: {e}") from None

  def status(self) -> control_pb2.StatusReply:
    """Every node's state, from the coordinator in the job; raises RunError."""
    return self._run.status()

  def failures(self) -> list:
    return []

  def raise_failure(self, again: bool = True) -> None:
    """Failures of a detached run show in its launcher.log and `lp status`."""


def main() -> None:
  """The launcher's job: launches the program attached, waits for it, and
  exits as `lp launch` would (0, 1 after a failure, 128+N after signal N)."""
  run_dir = pathlib.Path(sys.argv[1])
  import_path, payload = pickle.loads((run_dir / LAUNCH_FILE).read_bytes())
  sys.path[:0] = [p for p in import_path if p not in sys.path]
  plan, options = cloudpickle.loads(payload)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  notices = _Notices(slurm_jobs.check_preempt_signal(options.preempt_signal))
  requeue = options.requeue  # this process requeues its job, the launch itself does not
  options = dataclasses.replace(
    options, detach=False, requeue=False, log_dir=run_dir, on_notice=notices.heard
  )
  controller = session.run(slurm.LAUNCHER, plan, options, options.grace_period, handle_signals=True)
  notices.started()
  status = 0
  try:
    while not controller.wait(timeout=1.0):
      pass
  except errors.NodeFailedError as e:
    print(f"\nlp launch: {e}", file=sys.stderr, flush=True)
    status = 1
  # The notice to this job's own batch script stops the program through
  # lp.stop, which carries no signal: the nodes' jobs' notices do.
  stopped_by = controller.stopped_by or notices.signum
  if stopped_by and not status:
    status = 128 + stopped_by
  if requeue and notices.signum is not None:
    # atexit runs once the launcher's threads have ended: its clean-up is done.
    atexit.register(_requeue)
  sys.exit(status)


class _Notices:
  """Preemption notices: to this job's batch script (this process), or
  from the holders of the nodes' jobs. The first one stops the program
  gracefully; with requeue, the job then goes back in the queue."""

  def __init__(self, signum: signal.Signals | None):
    self.signum: int | None = None  # the signal of the first notice
    self._reason = ""
    self._started = False
    self._lock = threading.RLock()  # taken in the signal handler too
    if signum is not None:
      signal.signal(signum, self._signalled)

  def _signalled(self, signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    self.heard(
      signum,
      f"the launcher's Slurm job got {name}, its notice of the time limit or of a preemption",
    )

  def heard(self, signum: int, reason: str) -> None:
    with self._lock:
      if self.signum is None:
        self.signum, self._reason = signum, reason
      started = self._started
    if started:
      # A call to the coordinator: not in a signal handler.
      threading.Thread(target=_request_stop, args=(reason,), daemon=True).start()

  def started(self) -> None:
    """The program runs now; a notice that came before it did stops it."""
    with self._lock:
      self._started = True
      early = self.signum
    if early is not None:
      self.heard(early, self._reason)


def _request_stop(reason: str) -> None:
  context.current_runtime().request_stop(reason)


def _requeue() -> None:
  job_id = os.environ["SLURM_JOB_ID"]
  print(f"launchpad: requeueing Slurm job {job_id}", flush=True)
  slurm_jobs.run("scontrol", "requeue", job_id)

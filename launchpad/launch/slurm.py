"""The Slurm launcher (`launch_type='slurm'`): every node a job step on a Slurm cluster.

The nodes of groups that ask for the same `lp.SlurmResources` share one
Slurm job, one task per node (`slurm_jobs.py`); each node runs as a step of
its own in its job (`srun --jobid=J --ntasks=1 ...`), so Slurm places it
and binds its CPUs and GPUs, its output comes back through srun's pipe and
its exit status through srun's. A restart is a new step in the same job.

Attached (the default), this process is the launcher, as with SSH hosts:
it holds the coordinator, prints every node's lines prefixed with its
name, and keeps them in the run directory. Each job's batch script is a
holder (`slurm_lease.py`) connected back to this process: when the
connection closes, however this process ends (SIGKILL included), the job
ends and Slurm ends its steps. Detached (`detach=True`), the launcher itself
runs in a batch job of its own (`slurm_detach.py`) and this call returns at
once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from launchpad import errors, runs
from launchpad import resources as resources_lib
from launchpad.control.coordinator import Coordinator
from launchpad.courier import serialization
from launchpad.launch import (
  bundle,
  process_main,
  processes,
  registry,
  slurm_jobs,
  slurm_lease,
  slurm_step,
)
from launchpad.launch.output import OutputMux
from launchpad.launch.plan import Plan
from launchpad.launch.session import Session
from launchpad.resources import SlurmResources
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

# The coordinator listens on every interface: the compute nodes must reach it.
COORDINATOR_BIND = "[::]"
# How often the launch looks at a job Slurm has not started yet.
QUEUE_POLL_SECONDS = 1.0
# How long closing waits for the steps to end once their jobs are let go
# (Slurm sends SIGTERM, and SIGKILL after its KillWait, 30 s by default).
CLOSE_SECONDS = 45.0
# How much of a job's output an error quotes.
OUTPUT_TAIL_LINES = 20


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """Options of the Slurm launcher (`lp.launch` arguments of the same names).

  Attributes:
    local_resources: group label -> lp.SlurmResources: what each node of
      the group asks Slurm for (default: one CPU).
    log_dir: the run directory for node logs; on the shared filesystem for
      a detached run.
    tls: encrypt traffic between compute nodes: True makes a certificate for
      this launch; or give lp.TlsConfig.from_files(...).
    grace_period: seconds nodes get to end after a stop before being
      killed (a detached run's launcher applies it).
    detach: submit the whole program, its launcher included, as a batch job
      and return at once (a DetachedRun); follow it with `lp status`.
    shared_filesystem: the compute nodes see this machine's files at the
      same paths (home and project directories, the Python environment):
      nodes import the program's code from where it is here. False: the
      program's own modules travel to each node in a code bundle (as with
      SSH hosts), and only `python`, with launchpad, must be on the nodes.
    python: the interpreter the jobs and nodes run; default: this one.
    preempt_signal: ask Slurm for a notice before each job's time limit, as
      sbatch --signal takes it: 'USR1@60' sends SIGUSR1 60 s before. A
      notice stops the program gracefully.
    requeue: detached runs: after a notice has stopped the program, put the
      launcher's job back in the queue; it launches the program again when
      Slurm starts it.
    start_timeout: seconds the launch waits for Slurm to start the jobs
      (they may queue); then it fails, naming the group.
    address: this machine's address as the compute nodes reach it; default:
      the address it sends from towards slurmctld.
    launcher_resources: detached runs: the launcher job's own resources
      (one CPU; its time: the longest of the groups' if each gives one).
    on_notice: called with (signal, reason) when a preemption notice came.
  """

  local_resources: Mapping[str, SlurmResources] | None = None
  log_dir: str | pathlib.Path | None = None
  tls: bool | TlsConfig = False
  grace_period: float = 10.0
  detach: bool = dataclasses.field(
    default=False,
    metadata=registry.flag(
      "submit the whole program as a batch job and return", see="docs/remote.md", in_sweeps=False
    ),
  )
  shared_filesystem: bool = dataclasses.field(
    default=True,
    metadata=registry.flag("the compute nodes do not see this machine's files; ship the code"),
  )
  python: str | None = None
  preempt_signal: str | None = dataclasses.field(
    default=None,
    metadata=registry.flag(
      "stop gracefully on Slurm's notice before the time limit, e.g. USR1@60",
      metavar="SIG@SECONDS",
    ),
  )
  requeue: bool = dataclasses.field(
    default=False,
    metadata=registry.flag(
      "with --detach: after a notice stopped the program, queue its job again", in_sweeps=False
    ),
  )
  start_timeout: float = 600.0
  address: str | None = None
  launcher_resources: SlurmResources = dataclasses.field(default_factory=SlurmResources)
  on_notice: Callable[[int, str], None] | None = None

  def __post_init__(self):
    slurm_jobs.check_preempt_signal(self.preempt_signal)
    if not (isinstance(self.start_timeout, int | float) and self.start_timeout > 0):
      raise ValueError(f"slurm: start_timeout must be > 0 seconds, got {self.start_timeout!r}.")
    if not isinstance(self.launcher_resources, SlurmResources):
      raise TypeError(
        f"slurm: launcher_resources takes lp.SlurmResources(...), got {self.launcher_resources!r}."
      )
    if self.requeue and not self.detach:
      raise errors.ProgramError(
        "slurm: requeue=True needs a detached run (detach=True, `lp launch --detach`): an "
        "attached launcher cannot come back with its job."
      )
    if self.detach and not self.shared_filesystem:
      raise errors.ProgramError(
        "slurm: a detached run needs a shared filesystem: its launcher runs on a compute node "
        "and keeps the run directory where `lp status` reads it; drop shared_filesystem=False "
        "or launch attached."
      )

  @property
  def interpreter(self) -> str:
    return self.python or sys.executable


class SlurmLauncher:
  """Every node a step of its group's Slurm job."""

  options = SlurmOptions
  single_host = False
  nodes_travel = True

  def prepare(self, session: Session, options: SlurmOptions) -> _SlurmWorkers:
    """Submits the program's jobs and waits until Slurm runs them; raises
    SlurmError, naming the group and what Slurm said, when Slurm refuses
    one (before anything runs) or ends it before its nodes start."""
    plan = session.plan
    jobs = _check(plan, options)
    tls = TlsConfig.for_launch(options.tls)
    run = session.create_run(pathlib.Path(options.log_dir) if options.log_dir else None)
    output = OutputMux(run.path, sys.stdout)
    session.on_close("the node output", lambda: output.wait_drained(5.0))
    port = session.start_coordinator(COORDINATOR_BIND, tls).rpartition(":")[2]
    host = options.address or slurm_jobs.launcher_address()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    workers = _SlurmWorkers(
      plan, jobs, output, session.coordinator, host, address, tls, options, run
    )
    session.on_close("the Slurm jobs", workers.close)
    workers.allocate()
    session.start_runtime(address, tls)
    return workers

  def detach(self, plan: Plan, options: SlurmOptions) -> Any:
    """Submits the launcher's own batch job, which runs the program; returns
    a slurm_detach.DetachedRun once Slurm took it."""
    from launchpad.launch import slurm_detach

    return slurm_detach.submit(plan, _check(plan, options), options)


LAUNCHER = SlurmLauncher()


def _check(plan: Plan, options: SlurmOptions) -> list[slurm_jobs.Allocation]:
  """The program's jobs, each of which Slurm says it would run."""
  slurm_jobs.check_installed()
  groups = {worker.label for worker in plan.workers}
  resources = resources_lib.by_group(
    plan.program, groups, dict(options.local_resources or {}), SlurmResources, "slurm"
  )
  jobs = slurm_jobs.allocations(plan, resources)
  probe = slurm_lease.script(options.interpreter, "127.0.0.1", 1, None)
  for job in jobs:
    slurm_jobs.check_accepted(job.what, job.sbatch_arguments(), probe)
  return jobs


@dataclasses.dataclass
class _Step:
  """One start of a node: its srun process."""

  name: str
  process: subprocess.Popen
  run: int  # the node's restarts at this start
  ended: bool = False


class _SlurmWorkers:
  """The nodes of one program as steps of its Slurm jobs (the controller's `Workers`)."""

  def __init__(
    self,
    plan: Plan,
    jobs: list[slurm_jobs.Allocation],
    output: OutputMux,
    coordinator: Coordinator,
    host: str,
    address: str,
    tls: TlsConfig | None,
    options: SlurmOptions,
    run: runs.Run,
  ):
    self._plan = plan
    self._jobs = jobs
    self._output = output
    self._coordinator = coordinator
    self._host = host
    self._address = address
    self._tls = tls
    self._options = options
    self._run = run
    self._by_node = {name: job for job in jobs for name in job.nodes}
    self._nodes = {node.name: node for node in plan.workers}
    self._order = list(self._nodes)
    self._code = None if options.shared_filesystem else bundle.make()
    self._leases = slurm_lease.Leases(plan.secret, self._noticed, self._lost)
    self._lost_jobs: dict[str, str] = {}  # job id -> what ended it
    self._steps: dict[str, _Step] = {}  # each node's latest start
    self._alive: list[_Step] = []
    self._killed: set[str] = set()
    self._changed = threading.Condition()

  # Jobs.

  def allocate(self) -> None:
    """Submits every job and waits until Slurm runs them all (their holders
    connected back); raises SlurmError naming the group otherwise."""
    preempt = slurm_jobs.check_preempt_signal(self._options.preempt_signal)
    script = slurm_lease.script(self._options.interpreter, self._host, self._leases.port, preempt)
    for job in self._jobs:
      job.job_id = slurm_jobs.submit(job.what, self._sbatch_arguments(job), script)
      log.info("program %s: %s in Slurm job %s", self._plan.program, job.what, job.job_id)
    deadline = time.monotonic() + self._options.start_timeout
    for job in self._jobs:
      self._wait_started(job, deadline)

  def _sbatch_arguments(self, job: slurm_jobs.Allocation) -> list[str]:
    output = self._run.path / "slurm-%j.out" if self._options.shared_filesystem else "/dev/null"
    args = [
      f"--job-name=lp-{self._plan.program}",
      f"--output={output}",
      f"--export=ALL,{slurm_lease.KEY_VARIABLE}={self._leases.holder_key}",
      "--no-requeue",  # a job that comes back has lost its launcher's connection
      *slurm_jobs.preempt_option(self._options.preempt_signal),
    ]
    if not self._options.shared_filesystem:
      args.append("--chdir=/tmp")
    return [*args, *job.sbatch_arguments()]

  def _wait_started(self, job: slurm_jobs.Allocation, deadline: float) -> None:
    seen = None
    while not self._leases.wait(job.job_id, QUEUE_POLL_SECONDS):
      state = slurm_jobs.job_state(job.job_id)
      if state is None or state[0] in slurm_jobs.ENDED_STATES:
        raise slurm_jobs.SlurmError(
          f"Slurm job {job.job_id} of {job.what} ended before its nodes could start "
          f"({slurm_jobs.job_record(job.job_id) or 'Slurm no longer knows it'}).{self._tail(job)}"
        )
      if state != seen:
        log.info("Slurm job %s of %s: %s (%s)", job.job_id, job.what, *state)
        seen = state
      if time.monotonic() > deadline:
        raise slurm_jobs.SlurmError(
          f"Slurm did not start job {job.job_id} of {job.what} within "
          f"{self._options.start_timeout:.0f} s (squeue: {state[0]}, reason {state[1]}); the "
          "cluster is busy or cannot run it: ask for less, or wait longer with "
          "lp.SlurmOptions(start_timeout=...)."
        )

  def _tail(self, job: slurm_jobs.Allocation) -> str:
    try:
      text = (self._run.path / f"slurm-{job.job_id}.out").read_text(errors="replace")
    except OSError:
      return ""
    lines = text.splitlines()[-OUTPUT_TAIL_LINES:]
    return "\nIts output:\n" + "\n".join(lines) if lines else ""

  def _noticed(self, job_id: str, signal_name: str) -> None:
    job = next(j for j in self._jobs if j.job_id == job_id)
    name = "SIG" + signal_name.removeprefix("SIG")
    signum = getattr(signal, name, signal.SIGUSR1)
    reason = (
      f"Slurm job {job_id} of {job.what} got {name}, its notice of the time limit or of a "
      "preemption"
    )
    log.warning("program %s: %s; stopping it", self._plan.program, reason)
    if self._options.on_notice is not None:
      self._options.on_notice(signum, reason)
    self._coordinator.request_stop(reason, signum)

  def _lost(self, job_id: str) -> None:
    """A job's holder went away unasked: Slurm ended the job, and its nodes with it."""
    job = next(j for j in self._jobs if j.job_id == job_id)
    record = slurm_jobs.job_record(job_id)
    reason = f"Slurm ended job {job_id} of {job.what}" + (f" ({record})" if record else "")
    with self._changed:
      self._lost_jobs[job_id] = reason
    log.error("program %s: %s", self._plan.program, reason)
    self._coordinator.request_stop(reason)

  # The controller's Workers.

  def start_all(self) -> None:
    for name in self._order:
      self.start(name)

  def start(self, name: str) -> None:
    """Starts (or restarts) node `name` as a new step of its job."""
    job = self._by_node[name]
    with self._changed:
      lost = self._lost_jobs.get(job.job_id)
    if lost is not None:
      raise slurm_jobs.SlurmError(lost)
    env = {process_main.RUN_DIR_VARIABLE: str(self._run.path)} if self._code is None else {}
    spec = process_main.WorkerSpec(
      self._plan.program, self._address, self._plan.secret, self._nodes[name], env, self._tls
    )
    payload = slurm_step.StepPayload(serialization.cloudpickle_dumps(spec), self._host, self._code)
    command = [
      "srun",
      *job.srun_arguments(),
      f"--job-name={name}",
      *([] if self._code is None else ["--chdir=/tmp"]),
      self._options.interpreter,
      "-c",
      slurm_step.COMMAND,
    ]
    stream = self._output.attach(name, self._order.index(name))
    process = subprocess.Popen(
      command,
      stdin=subprocess.PIPE,
      stdout=stream,
      stderr=stream,
      env=self._step_environment(),
      start_new_session=True,  # a Ctrl-C in the terminal is the launcher's to handle
    )
    stream.close()
    step = _Step(name, process, self._coordinator.nodes[name].restarts)
    with self._changed:
      self._steps[name] = step
      self._alive.append(step)
      self._killed.discard(name)
    threading.Thread(
      target=self._run_step, args=(step, pickle.dumps(payload)), name=f"srun-{name}", daemon=True
    ).start()

  def _step_environment(self) -> dict[str, str]:
    """srun's environment, which the nodes get: the launcher's import path
    too when the compute nodes share this machine's files."""
    if self._code is not None:
      return slurm_jobs.environment()
    return slurm_jobs.environment({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})

  def _run_step(self, step: _Step, payload: bytes) -> None:
    try:
      step.process.stdin.write(payload)
      step.process.stdin.close()
    except OSError:
      pass  # srun ended already; its status says why
    returncode = step.process.wait()
    with self._changed:
      step.ended = True
      self._alive.remove(step)
      self._changed.notify_all()
      current = self._steps.get(step.name) is step
      killed = step.name in self._killed
    if current and not killed:
      self._exited(step.name, returncode, step.run)

  def _exited(self, name: str, returncode: int, run: int) -> None:
    """Reports how a node's step ended if the node itself did not say."""
    job = self._by_node[name]
    record = self._coordinator.nodes[name]
    host = record.host or f"Slurm job {job.job_id}"
    with self._changed:
      lost = self._lost_jobs.get(job.job_id)
    if returncode != 0 and lost is None:
      state = slurm_jobs.job_state(job.job_id)
      if state is None or state[0] != "RUNNING":
        lost = f"Slurm ended job {job.job_id} of {job.what} ({slurm_jobs.job_record(job.job_id)})"
    if lost is not None and returncode != 0:
      processes.report_unannounced_exit(
        self._coordinator, name, record.pid, host, lost, self._output, run
      )
      return
    processes.report_exit(
      self._coordinator, name, record.pid, host, _returncode(returncode), False, self._output, run
    )

  def join(self, timeout: float) -> bool:
    with self._changed:
      return self._changed.wait_for(lambda: not self._alive, timeout)

  def kill(self, names: list[str]) -> None:
    """SIGKILL to the steps of these nodes (srun itself, for a step Slurm has
    not created yet)."""
    with self._changed:
      self._killed.update(names)
      steps = [self._steps[n] for n in names if n in self._steps and not self._steps[n].ended]
    for job in self._jobs:
      mine = [s for s in steps if self._by_node[s.name] is job]
      if not mine:
        continue
      running = slurm_jobs.steps(job.job_id)
      slurm_jobs.kill_steps([running[s.name] for s in mine if s.name in running])
      for step in mine:
        if step.name not in running:
          step.process.kill()

  def close(self) -> None:
    """Lets the jobs go: their holders exit and Slurm ends what still runs;
    cancels the jobs that never started."""
    self._leases.release([job.job_id for job in self._jobs if job.job_id])
    self._leases.close()
    if not self.join(CLOSE_SECONDS):
      with self._changed:
        for step in self._alive:
          step.process.kill()
    slurm_jobs.cancel([job.job_id for job in self._jobs if job.job_id])


def _returncode(returncode: int) -> int:
  """srun's exit status as a process's: 128+N (its task was killed by
  signal N) becomes -N."""
  if 128 < returncode < 128 + signal.NSIG:
    return 128 - returncode
  return returncode

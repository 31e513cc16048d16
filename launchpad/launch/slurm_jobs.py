"""Slurm's commands, and the jobs (allocations) that hold a program's nodes.

Nodes of groups that ask for the same `lp.SlurmResources` share one job of
one task per node: `sbatch --ntasks=N --cpus-per-task=C --gpus-per-task=G
--mem-per-cpu=...`. Each node then runs as a job step of its own in its
job (`srun --jobid=J --ntasks=1 --exact ...`), so Slurm places it, binds
its CPUs and GPUs, and reports its exit status; a restart is a new step
in the same job. Why steps in plain jobs and not one heterogeneous job:
docs/design.md, "Slurm".

Every command runs with a deadline, in this process's environment minus
the variables Slurm sets inside a job (a launcher that runs in a batch job
must not hand its own job's sizes to the commands it runs).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import shutil
import signal
import socket
import subprocess

from launchpad import errors
from launchpad.launch.plan import Plan
from launchpad.resources import SlurmResources, slurm_megabytes

# Slurm's commands the launcher runs.
COMMANDS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
# Bound on one command: slurmctld answers within its MessageTimeout (10 s by
# default) and the commands retry a few times.
COMMAND_SECONDS = 60.0
# Job states after which a job runs no more (squeue's %T).
ENDED_STATES = (
  "BOOT_FAIL",
  "CANCELLED",
  "COMPLETED",
  "DEADLINE",
  "FAILED",
  "NODE_FAIL",
  "OUT_OF_MEMORY",
  "PREEMPTED",
  "TIMEOUT",
)
# Signals that cannot be caught, or that already end jobs: no preemption notice.
_NOT_NOTICES = ("KILL", "STOP", "TERM", "CONT")


class SlurmError(errors.LaunchpadError):
  """Slurm refused or ended a job of the program, or cannot be reached; the
  message names the group and says what Slurm said."""


def check_installed() -> None:
  """Raises SlurmError unless Slurm's commands are on PATH."""
  missing = [name for name in COMMANDS if shutil.which(name) is None]
  if missing:
    raise SlurmError(
      f"the slurm launcher runs Slurm's commands, and {', '.join(missing)} "
      f"{'is' if len(missing) == 1 else 'are'} not on PATH; launch from a login node of a Slurm "
      "cluster, or install Slurm's client commands (e.g. apt-get install slurm-client)."
    )


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
  """This process's environment for Slurm's commands and the nodes: without
  the SLURM_ variables of the job this process may run in (SLURM_CONF kept)."""
  env = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith("SLURM_") or key == "SLURM_CONF"
  }
  env.update(extra or {})
  return env


def run(command: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
  """Runs one of Slurm's commands to its end; raises SlurmError if it does
  not end within COMMAND_SECONDS."""
  try:
    return subprocess.run(
      [command, *args],
      input=stdin,
      capture_output=True,
      text=True,
      env=environment(),
      timeout=COMMAND_SECONDS,
      start_new_session=True,  # a Ctrl-C in the terminal is the launcher's to handle
    )
  except subprocess.TimeoutExpired:
    raise SlurmError(
      f"`{command} {' '.join(args)}` did not answer within {COMMAND_SECONDS:.0f} s: slurmctld "
      "is down or overloaded; check `sinfo`, then launch again."
    ) from None


def said(result: subprocess.CompletedProcess) -> str:
  """What a Slurm command said, in one line."""
  lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
  return "; ".join(line for line in lines if line) or f"exit status {result.returncode}"


def preempt_option(preempt_signal: str | None) -> list[str]:
  """sbatch's --signal for a preemption notice 'USR1@60' (the signal, and
  the seconds before the time limit), sent to the batch step only."""
  if preempt_signal is None:
    return []
  name, _, seconds = preempt_signal.partition("@")
  return [f"--signal=B:{name.removeprefix('SIG')}" + (f"@{seconds}" if seconds else "")]


def check_preempt_signal(preempt_signal: str | None) -> signal.Signals | None:
  """The signal of a preempt_signal 'USR1@60'; raises ValueError saying what
  is accepted."""
  if preempt_signal is None:
    return None
  name, _, seconds = preempt_signal.partition("@")
  name = name.strip().upper().removeprefix("SIG")
  found = getattr(signal, f"SIG{name}", None)
  if (
    not isinstance(found, signal.Signals)
    or name in _NOT_NOTICES
    or not (seconds == "" or seconds.isdigit())
  ):
    raise ValueError(
      f"preempt_signal={preempt_signal!r}: give a signal that the launcher can catch and the "
      "seconds before the time limit when Slurm should send it, as sbatch's --signal takes "
      "them: 'USR1@60'."
    )
  return found


@dataclasses.dataclass
class Allocation:
  """One Slurm job: the nodes of the groups that ask for `resources`."""

  groups: list[str]
  resources: SlurmResources
  nodes: list[str]  # the worker names, one task each
  job_id: str = ""

  @property
  def what(self) -> str:
    """The allocation in words, for messages."""
    groups = ", ".join(repr(g) for g in self.groups)
    return f"group{'s' if len(self.groups) > 1 else ''} {groups}"

  def sbatch_arguments(self) -> list[str]:
    """What sbatch gets for the job: one task per node and its resources."""
    r = self.resources
    args = [f"--ntasks={len(self.nodes)}", f"--cpus-per-task={r.cpus}"]
    if r.gpus:
      args.append(f"--gpus-per-task={r.gpus}")
    if r.mem is not None:
      # Per CPU, so that every task's share holds a node's memory wherever
      # Slurm puts the task.
      args.append(f"--mem-per-cpu={math.ceil(slurm_megabytes(r.mem) / r.cpus)}M")
    for option, value in (
      ("--time", r.time),
      ("--partition", r.partition),
      ("--account", r.account),
      ("--constraint", r.constraint),
    ):
      if value is not None:
        args.append(f"{option}={value}")
    return [*args, *r.sbatch_options]

  def srun_arguments(self) -> list[str]:
    """What srun gets for one node's step in this job."""
    r = self.resources
    args = [
      f"--jobid={self.job_id}",
      "--ntasks=1",
      "--nodes=1",
      f"--cpus-per-task={r.cpus}",
      "--exact",  # exactly its CPUs: the steps of one job share its allocation
    ]
    if r.gpus:
      args.append(f"--gres=gpu:{r.gpus}")
    if r.mem is not None:
      args.append(f"--mem={slurm_megabytes(r.mem)}M")
    return args


def allocations(plan: Plan, resources: dict[str, SlurmResources]) -> list[Allocation]:
  """The program's jobs: one per distinct SlurmResources, holding every
  node of the groups that ask for them (groups without: the defaults)."""
  by_resources: dict[SlurmResources, Allocation] = {}
  for worker in plan.workers:
    wanted = resources.get(worker.label, SlurmResources())
    allocation = by_resources.setdefault(wanted, Allocation([], wanted, []))
    if worker.label not in allocation.groups:
      allocation.groups.append(worker.label)
    allocation.nodes.append(worker.name)
  return list(by_resources.values())


def check_accepted(what: str, sbatch_arguments: list[str], script: str) -> None:
  """Asks Slurm whether it would run this job (`sbatch --test-only`), before
  anything runs; raises SlurmError naming `what` with Slurm's answer."""
  result = run("sbatch", "--test-only", *sbatch_arguments, stdin=script)
  if result.returncode != 0:
    raise SlurmError(
      f"Slurm refuses the job of {what} (sbatch {' '.join(sbatch_arguments)}): "
      f"{said(result)}. Change the lp.SlurmResources of {what} to what the cluster has "
      "(`sinfo -o '%P %c %m %G %f'` lists partitions, CPUs, memory, GPUs and features)."
    )


def submit(what: str, sbatch_arguments: list[str], script: str) -> str:
  """Submits a batch job; returns its id. Raises SlurmError naming `what`."""
  result = run("sbatch", "--parsable", *sbatch_arguments, stdin=script)
  job_id = result.stdout.strip().split(";")[0]
  if result.returncode != 0 or not job_id.isdigit():
    raise SlurmError(f"Slurm did not take the job of {what}: {said(result)}.")
  return job_id


def job_state(job_id: str) -> tuple[str, str] | None:
  """(state, reason) of a job as squeue shows it; None once Slurm has
  forgotten it (it ended a while ago)."""
  result = run("squeue", "--noheader", f"--jobs={job_id}", "--format=%T|%r")
  line = result.stdout.strip().splitlines()[:1]
  if result.returncode != 0 or not line:
    return None
  state, _, reason = line[0].partition("|")
  return state.strip(), reason.strip()


def job_record(job_id: str) -> str:
  """The job's state, reason and exit code in words, from `scontrol show job`
  (Slurm keeps ended jobs for MinJobAge, 300 s by default); '' if unknown."""
  result = run("scontrol", "--oneliner", "show", "job", job_id)
  fields = dict(
    word.split("=", 1) for word in result.stdout.split() if "=" in word and result.returncode == 0
  )
  found = [f"{key}={fields[key]}" for key in ("JobState", "Reason", "ExitCode") if key in fields]
  return " ".join(found)


def cancel(job_ids: list[str]) -> None:
  """scancel; jobs that have ended already are no error."""
  if job_ids:
    run("scancel", *job_ids)


def steps(job_id: str) -> dict[str, str]:
  """Step name -> step id ('123.4') of the job's running steps."""
  result = run("squeue", "--noheader", "--steps", f"--jobs={job_id}", "--format=%i %j")
  found = {}
  for line in result.stdout.splitlines():
    step, _, name = line.strip().partition(" ")
    if step and name:
      found[name.strip()] = step
  return found


def kill_steps(step_ids: list[str]) -> None:
  """SIGKILL to every task of these steps."""
  if step_ids:
    run("scancel", "--signal=KILL", *step_ids)


def launcher_address() -> str:
  """This machine's address as the compute nodes reach it: the one it
  sends from towards slurmctld, whom every node of the cluster reaches; or,
  when slurmctld runs here (that address is loopback), towards a compute
  node."""
  result = run("scontrol", "show", "config")
  for line in result.stdout.splitlines():
    key, _, value = line.partition("=")
    if key.strip().startswith(("SlurmctldHost", "ControlMachine", "ControlAddr")):
      host = value.strip()
      if "(" in host:  # name(address)
        host = host[host.index("(") + 1 : host.index(")")]
      address = source_address(host)
      return address if not _is_loopback(address) else _towards_compute_nodes(address)
  raise SlurmError(
    f"`scontrol show config` names no SlurmctldHost ({said(result)}); is SLURM_CONF right?"
  )


def _towards_compute_nodes(loopback: str) -> str:
  """The address this machine sends from towards the first compute node that
  is not this machine; `loopback` if every node is (a one-machine cluster)."""
  nodes = run("sinfo", "--noheader", "--Node", "--format=%o").stdout.split()
  for node in dict.fromkeys(nodes):
    address = source_address(node)
    if not _is_loopback(address):
      return address
  return loopback


def _is_loopback(address: str) -> bool:
  try:
    return ipaddress.ip_address(address).is_loopback
  except ValueError:
    return False


def source_address(towards: str) -> str:
  """The address this machine sends from to `towards` (a UDP connect sends
  nothing); loopback when `towards` is this machine."""
  try:
    family, _, _, _, target = socket.getaddrinfo(towards, 9, proto=socket.IPPROTO_UDP)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
      probe.connect(target)
      return probe.getsockname()[0]
  except OSError as e:
    raise SlurmError(
      f"cannot find this machine's address towards {towards} ({e}); give it with "
      "lp.SlurmOptions(address=...)."
    ) from None

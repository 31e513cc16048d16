"""A real single-host Slurm cluster on loopback, started by the tests.

munged, slurmctld and slurmd from Debian's packages (`slurmctld slurmd munge
slurm-client`), each a child process of the test run, with a configuration,
a munge key, state and spool directories of their own in a temporary
directory: nothing outside it is read or changed. The one compute node is
called `localhost`, at 127.0.0.1, and claims 64 CPUs and two GPUs (GRES
backed by /dev/null and /dev/zero) so that tests can ask for resources this
2-core machine does not have; Slurm then only does the bookkeeping. It has
one feature, FEATURE, for `--constraint`.
Commands that talk to the cluster need `SLURM_CONF` from `environment()`.

The daemons run as the user who runs the tests (SlurmUser and SlurmdUser
are that user, root or not): a cluster of one user, whose jobs slurmd can
start without root's privileges because they are its own (with
proctrack/linuxproc and task/none nothing needs root).
"""

from __future__ import annotations

import os
import pathlib
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

# Set by CI: missing Slurm daemons fail the tests instead of skipping them.
REQUIRED = "LAUNCHPAD_TEST_REQUIRE_SLURM"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
NODE = "localhost"
PARTITION = "debug"
CPUS = 64
GPUS = 2
FEATURE = "loopback"


def find_daemons() -> dict[str, str]:
  """The path of each Slurm program; skips the test (fails it under CI) if one is missing."""
  found = {name: shutil.which(name) or _sbin(name) for name in DAEMONS}
  missing = [name for name, path in found.items() if path is None]
  if missing:
    message = (
      f"Slurm is not installed ({', '.join(missing)} missing): "
      "apt-get install slurmctld slurmd slurm-client munge"
    )
    if os.environ.get(REQUIRED):
      pytest.fail(message)
    pytest.skip(message)
  return found


def _sbin(name: str) -> str | None:
  path = pathlib.Path("/usr/sbin") / name
  return str(path) if os.access(path, os.X_OK) else None


class LoopbackSlurm:
  """munged + slurmctld + slurmd serving one partition of one node."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.conf = directory / "slurm.conf"
    self._processes: list[subprocess.Popen] = []
    self._paths: dict[str, str] = {}

  def environment(self) -> dict[str, str]:
    """os.environ plus what Slurm's commands need to reach this cluster."""
    return {**os.environ, "SLURM_CONF": str(self.conf)}

  def start(self, timeout: float = 60.0) -> None:
    self._paths = find_daemons()
    for sub in ("munge", "state", "spool", "log"):
      (self.directory / sub).mkdir(mode=0o700)
    # munged checks that every directory up to its socket can be searched.
    (self.directory / "munge").chmod(0o755)
    key = self.directory / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    self._write_config()
    self._spawn("munged", "-F", "-f", *self._munge_options())
    self._wait(lambda: (self.directory / "munge" / "munge.socket").exists(), timeout, "munged")
    env = self.environment()
    self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf), env=env)
    self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", NODE, env=env)
    self._wait(self._node_idle, timeout, "slurmd (the node never became idle)")

  def stop(self) -> None:
    for process in reversed(self._processes):
      if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    for process in reversed(self._processes):
      try:
        process.wait(15)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)
    self._processes.clear()

  def jobs(self) -> list[str]:
    """`squeue`'s lines for every job the cluster still has (pending or running)."""
    result = self.run("squeue", "--noheader", "--format=%i %j %T")
    return [line for line in result.stdout.splitlines() if line.strip()]

  def run(self, command: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs one of Slurm's commands against this cluster."""
    return subprocess.run(
      [self._paths.get(command, command), *args],
      env=self.environment(),
      capture_output=True,
      text=True,
      timeout=timeout,
    )

  def logs(self) -> str:
    """The daemons' logs, for a failing test's message."""
    parts = []
    for path in sorted((self.directory / "log").glob("*.log")):
      parts.append(f"== {path.name}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)

  def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
    log = open(self.directory / "log" / f"{name}.out", "wb")
    with log:
      self._processes.append(
        subprocess.Popen([self._paths[name], *args], stdout=log, stderr=subprocess.STDOUT, env=env)
      )

  def _wait(self, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
      if any(p.poll() is not None for p in self._processes):
        self.stop()
        pytest.fail(f"{what}: a Slurm daemon exited while starting.\n{self.logs()}")
      if time.monotonic() > deadline:
        self.stop()
        pytest.fail(f"{what}: not ready within {timeout} s.\n{self.logs()}")
      time.sleep(0.2)

  def _node_idle(self) -> bool:
    result = self.run("sinfo", "--noheader", "--format=%t", "--nodes", NODE, timeout=10)
    return result.returncode == 0 and result.stdout.strip() == "idle"

  def _munge_options(self) -> list[str]:
    munge = self.directory / "munge"
    return [
      f"--socket={munge / 'munge.socket'}",
      f"--key-file={munge / 'munge.key'}",
      f"--log-file={self.directory / 'log' / 'munged.log'}",
      f"--pid-file={munge / 'munged.pid'}",
      f"--seed-file={munge / 'munged.seed'}",
    ]

  def _write_config(self) -> None:
    d = self.directory
    ctld_port, slurmd_port = _free_port(), _free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    self.conf.write_text(f"""\
ClusterName=launchpadtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d / "munge" / "munge.socket"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "state" / "slurmctld.pid"}
SlurmdPidFile={d / "spool" / "slurmd.pid"}
SlurmctldLogFile={d / "log" / "slurmctld.log"}
SlurmdLogFile={d / "log" / "slurmd.log"}
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MinJobAge=5
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={NODE} CPUs={CPUS} RealMemory=16000 Gres=gpu:{GPUS} Features={FEATURE} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    (d / "gres.conf").write_text(
      f"NodeName={NODE} Name=gpu File=/dev/null\nNodeName={NODE} Name=gpu File=/dev/zero\n"
    )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> LoopbackSlurm:
  """One Slurm cluster for the whole test session (starting one takes seconds)."""
  cluster = LoopbackSlurm(tmp_path_factory.mktemp("slurm"))
  cluster.start()
  yield cluster
  cluster.stop()

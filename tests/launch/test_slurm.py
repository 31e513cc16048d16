"""The Slurm launcher against a real single-host Slurm cluster (tests/slurm.py).

One cluster serves the whole session: munged, slurmctld and slurmd on
loopback, one node `localhost` at 127.0.0.1 claiming 64 CPUs and two GPUs.
Every test ends with the cluster's queue empty: nothing a launch submitted
stays queued or running, however the launch ended.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import cloudpickle
import psutil
import pytest

import launchpad as lp
from launchpad import runs
from launchpad.control.coordinator import FINISHED
from launchpad.launch.slurm_jobs import SlurmError
from tests.child_process import Child
from tests.launch import test_absl_logging as absl_lines
from tests.launching import launching
from tests.slurm import FEATURE, slurm_cluster  # noqa: F401 - the session's cluster, a fixture

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Bound on every program, command and wait of these tests.
TIMEOUT = 90.0
# How often a wait looks again at the queue or a run.
POLL_SECONDS = 0.2
ROOT = pathlib.Path(__file__).resolve().parents[2]
IDLE = "tests/launch/programs/lp_slurm.py:make_idle"
ABSL_PROGRAM = "tests/launch/programs/absl_logs.py:make_program"
# The same idlers, with --time_limit=MINUTES for their job.
LIMITED = "tests/launch/programs/lp_slurm.py"
# Bound on a run that waits for Slurm's own notice before its time limit.
NOTICE_TIMEOUT = 240.0

launched = launching(launch_type="slurm", grace_period=5.0)


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):  # noqa: F811 - the fixture imported above
  """The cluster, found by this process's launches through SLURM_CONF; the
  test fails if it leaves anything in the queue."""
  monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
  yield slurm_cluster
  left = wait_for_empty_queue(slurm_cluster)
  if left:  # the next tests, and the cluster's stop, get an empty queue all the same
    slurm_cluster.run("scancel", *[line.split()[0] for line in left])
    wait_for_empty_queue(slurm_cluster)
  assert not left, f"jobs left in the queue: {left}\n{slurm_cluster.logs()}"


@pytest.fixture
def lp_child(slurm, launchpad_home):
  """Starts `lp launch --mode=slurm ARGS` as a child; kills it at teardown if it still runs."""
  children: list[Child] = []

  def start(*args: str) -> Child:
    child = Child(command(*args), TIMEOUT, env=environment(slurm, launchpad_home), cwd=ROOT)
    children.append(child)
    return child

  yield start
  for child in children:
    child.kill()


def wait_for_idlers(child: Child) -> None:
  """Waits until both nodes of the idle program have said they are up."""
  child.wait_for(re.compile(r"idler\[[01]\] \| idle [01] up\Z"), count=2)


def wait_for_empty_queue(cluster, timeout: float = TIMEOUT) -> list[str]:
  """Waits until the cluster has no job; the jobs still there at the deadline."""
  deadline = time.monotonic() + timeout
  while (jobs := cluster.jobs()) and time.monotonic() < deadline:
    time.sleep(POLL_SECONDS)
  return jobs


def wait_until(condition, what: str, timeout: float = TIMEOUT):
  """Waits until `condition()` is true; fails naming `what`."""
  deadline = time.monotonic() + timeout
  while not (value := condition()):
    if time.monotonic() > deadline:
      pytest.fail(f"{what}: not within {timeout} s")
    time.sleep(POLL_SECONDS)
  return value


def text_of(path: pathlib.Path) -> str:
  """The file's text; '' while it does not exist (a job that has not started)."""
  try:
    return path.read_text()
  except FileNotFoundError:
    return ""


def command(*args: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "launchpad.cli",
    "launch",
    "--mode=slurm",
    "--grace-period=5",
    *args,
  ]


def environment(cluster, home: pathlib.Path) -> dict[str, str]:
  return {**cluster.environment(), "LAUNCHPAD_HOME": str(home)}


def lp_launch(cluster, home: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  """`lp launch --mode=slurm ARGS` from the repository's root, to its end."""
  return subprocess.run(
    command(*args),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=environment(cluster, home),
    cwd=ROOT,
  )


def lp_command(cluster, home: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  """`lp ARGS` (status, top, stop, ...) from the repository's root, to its end."""
  return subprocess.run(
    [sys.executable, "-m", "launchpad.cli", *args],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=environment(cluster, home),
    cwd=ROOT,
  )


def job_field(cluster, job_id: str, field: str) -> str:
  shown = cluster.run("scontrol", "--oneliner", "show", "job", job_id).stdout
  return dict(w.split("=", 1) for w in shown.split() if "=" in w).get(field, "")


def launcher_jobs(cluster, program: str) -> list[str]:
  """The ids of the queued or running jobs named after `program`."""
  return [line.split()[0] for line in cluster.jobs() if line.split()[1] == f"lp-{program}"]


def srun_processes(job: str) -> list[psutil.Process]:
  """This machine's srun processes of job `job`."""
  found = []
  for process in psutil.process_iter(["name", "cmdline"]):
    if process.info["name"] == "srun" and f"--jobid={job}" in (process.info["cmdline"] or []):
      found.append(process)
  return found


# Nodes.


RESOURCE_VARIABLES = (
  "SLURM_JOB_ID",
  "SLURM_STEP_ID",
  "SLURM_CPUS_PER_TASK",
  "CUDA_VISIBLE_DEVICES",
  "SLURM_STEP_GPUS",
  "LAUNCHPAD_HOST",
)


def report_resources(path: str) -> None:
  """Writes what Slurm gave this node: its variables, and its job's fields
  as `scontrol show job` shows them (under "job")."""
  job = os.environ["SLURM_JOB_ID"]
  shown = subprocess.run(
    ["scontrol", "--oneliner", "show", "job", job], capture_output=True, text=True, timeout=30
  ).stdout
  fields = dict(w.split("=", 1) for w in shown.split() if "=" in w)
  found = {name: os.environ.get(name) for name in RESOURCE_VARIABLES}
  found["job"] = fields
  pathlib.Path(path).write_text(json.dumps(found))
  print(f"resources of job {job} written", flush=True)


def fail_twice_then_succeed(path: str) -> None:
  """Raises on its first run and dies on its second (counted in a file)."""
  with open(path, "a") as f:
    f.write(f"run in step {os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_STEP_ID']}\n")
  count = len(pathlib.Path(path).read_text().splitlines())
  if count == 1:
    raise RuntimeError("first run fails")
  if count == 2:
    os._exit(5)


def report_module(name: str, path: str) -> None:
  """Writes where module `name` is imported from, here."""
  pathlib.Path(path).write_text(importlib.import_module(name).__file__)


# Running attached and detached.


def test_lp_launch_runs_the_consumer_producers_example_attached(slurm, launchpad_home):
  result = lp_launch(
    slurm,
    launchpad_home,
    "examples/consumer_producers.py",
    "--",
    "--num_producers=3",
    "--num_steps=3",
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert "consumer[0] | Step 2: results [0, 1, 2]" in result.stdout, result.stdout


def test_lp_launch_detach_returns_at_once_and_the_run_goes_on_in_its_job(slurm, launchpad_home):
  result = lp_launch(
    slurm,
    launchpad_home,
    "--detach",
    "examples/consumer_producers.py",
    "--",
    "--num_producers=2",
    "--num_steps=3",
  )
  assert result.returncode == 0, result.stdout + result.stderr
  submitted = re.search(r"submitted as Slurm job (\d+), run (\S+)\.", result.stdout)
  assert submitted, result.stdout
  run_dir = launchpad_home / "runs" / submitted[2]
  assert not wait_for_empty_queue(slurm), "the detached run did not end"
  log = (run_dir / "launcher.log").read_text()
  assert "consumer[0] | Step 2: results [0, 1]" in log, log
  assert "Step 2: results [0, 1]" in (run_dir / "consumer[0].log").read_text()
  assert "ended" in runs.Run(run_dir).info()


def test_nodes_get_their_groups_resources_in_a_job_per_group(slurm, launched, tmp_path, capfd):
  program = lp.Program("resources")
  program.add_node(lp.PyNode(report_resources, str(tmp_path / "gpu.json")), label="gpu")
  program.add_node(lp.PyNode(report_resources, str(tmp_path / "plain.json")), label="plain")
  resources = {"gpu": lp.SlurmResources(cpus=2, gpus=1, mem="300M")}
  controller = launched(program, local_resources=resources)
  assert controller.wait(TIMEOUT) is True
  gpu = json.loads((tmp_path / "gpu.json").read_text())
  plain = json.loads((tmp_path / "plain.json").read_text())
  assert gpu["SLURM_CPUS_PER_TASK"] == "2" and plain["SLURM_CPUS_PER_TASK"] == "1"
  assert gpu["CUDA_VISIBLE_DEVICES"] in ("0", "1") and gpu["SLURM_STEP_GPUS"] in ("0", "1")
  assert plain["CUDA_VISIBLE_DEVICES"] is None
  assert gpu["job"]["MinMemoryCPU"] == "150M"  # 300 MB per node of 2 CPUs
  assert gpu["SLURM_JOB_ID"] != plain["SLURM_JOB_ID"]
  assert gpu["LAUNCHPAD_HOST"] == plain["LAUNCHPAD_HOST"] == "127.0.0.1"
  out = capfd.readouterr().out
  assert f"gpu[0] | resources of job {gpu['SLURM_JOB_ID']} written" in out, out


def test_time_account_constraint_and_sbatch_options_reach_the_job(slurm, launched, tmp_path):
  program = lp.Program("options")
  program.add_node(lp.PyNode(report_resources, str(tmp_path / "node.json")), label="node")
  resources = lp.SlurmResources(
    time=5, account="lab", constraint=FEATURE, sbatch_options=["--comment=from-launchpad"]
  )
  controller = launched(program, local_resources={"node": resources})
  assert controller.wait(TIMEOUT) is True
  job = json.loads((tmp_path / "node.json").read_text())["job"]
  assert job["TimeLimit"] == "00:05:00", job
  assert job["Account"] == "lab", job
  assert job["Features"] == FEATURE, job
  assert job["Comment"] == "from-launchpad", job


def test_without_a_shared_filesystem_code_travels_in_a_bundle(
  slurm, launched, tmp_path, monkeypatch
):
  (tmp_path / "code").mkdir()
  (tmp_path / "code" / "lp_slurm_bundled.py").write_text("VALUE = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path / "code"))
  # Loaded here, as the bundle takes what the launcher loaded; forgotten at teardown.
  monkeypatch.setitem(sys.modules, "lp_slurm_bundled", importlib.import_module("lp_slurm_bundled"))
  program = lp.Program("bundled")
  program.add_node(lp.PyNode(report_module, "lp_slurm_bundled", str(tmp_path / "where")), label="n")
  controller = launched(program, shared_filesystem=False)
  assert controller.wait(TIMEOUT) is True
  where = (tmp_path / "where").read_text()
  assert where.startswith("/tmp/launchpad-code-") and where.endswith("/lp_slurm_bundled.py")


def test_absl_logging_of_a_node_reaches_the_terminal_and_its_log(slurm, launchpad_home, tmp_path):
  run_dir = tmp_path / "run"
  result = lp_launch(slurm, launchpad_home, f"--log-dir={run_dir}", ABSL_PROGRAM)
  assert result.returncode == 0, result.stdout + result.stderr
  terminal = result.stdout.splitlines()
  log = (run_dir / "talker[0].log").read_text().splitlines()
  for line in (absl_lines.INFO, absl_lines.WARNING):
    assert len(absl_lines.matching(line, terminal, "talker[0] | ")) == 1, result.stdout
    assert len(absl_lines.matching(line, log)) == 1, log
  assert not absl_lines.matching(absl_lines.DEBUG, terminal, "talker[0] | "), result.stdout


# Failures and restarts.


def test_a_crash_exits_1_with_the_nodes_traceback_and_source_line(slurm, launchpad_home):
  result = lp_launch(slurm, launchpad_home, "tests/launch/programs/lp_crash.py:make_program")
  assert result.returncode == 1, result.stdout + result.stderr
  assert "node crasher[0] failed: ValueError: boom 17" in result.stderr, result.stderr
  assert 'raise ValueError("boom 17")' in result.stderr, result.stderr
  assert "crasher[0] | about to explode" in result.stdout


def test_a_node_restarts_in_a_new_step_of_its_job(slurm, launched, tmp_path):
  count = tmp_path / "runs"
  program = lp.Program("restarts")
  program.add_node(
    lp.PyNode(fail_twice_then_succeed, str(count)),
    label="flaky",
    restart="on-failure",
    max_restarts=2,
    restart_backoff=0.0,
  )
  controller = launched(program)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  steps = [line.split()[-1] for line in count.read_text().splitlines()]
  assert len(steps) == 3 and len(set(steps)) == 3, steps  # three steps...
  assert len({step.split(".")[0] for step in steps}) == 1, steps  # ...of one job
  record = controller.status().nodes[0]
  assert (record.state, record.restarts) == (FINISHED, 2)


# Stopping.


def test_ctrl_c_stops_an_attached_run_gracefully(lp_child):
  child = lp_child(IDLE)
  wait_for_idlers(child)
  child.process.send_signal(signal.SIGINT)
  assert child.finish() == 128 + signal.SIGINT, child.output()
  assert "idler[0] | idle 0 stopped" in child.out() and "idler[1] | idle 1 stopped" in child.out()


def test_sigkill_of_the_attached_launcher_leaves_no_job(slurm, lp_child):
  child = lp_child(IDLE)
  wait_for_idlers(child)
  [job] = launcher_jobs(slurm, "idle")
  child.process.send_signal(signal.SIGKILL)
  assert child.finish() == -signal.SIGKILL
  assert not wait_for_empty_queue(slurm), "the killed launcher's job is still queued"
  # Its srun processes, orphaned here, end with their steps.
  wait_until(lambda: not srun_processes(job), f"srun processes of job {job} gone")


def test_lp_status_top_and_stop_work_on_a_detached_run(slurm, launchpad_home):
  result = lp_launch(slurm, launchpad_home, "--detach", IDLE)
  assert result.returncode == 0, result.stdout + result.stderr
  name = re.search(r", run (\S+)\.", result.stdout)[1]

  def running() -> bool:
    try:
      reply = runs.find(name).status()
    except (LookupError, runs.RunError):
      return False
    return len(reply.nodes) == 2 and all(node.state == "running" for node in reply.nodes)

  wait_until(running, f"run {name} running")
  for args in (["status", name], ["top", name, "--iterations=1"]):
    shown = lp_command(slurm, launchpad_home, *args)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for node in ("idler[0]", "idler[1]"):
      row = rf"^\s*{re.escape(node)}\s+running\b"
      assert re.search(row, shown.stdout, re.MULTILINE), f"lp {args[0]}:\n{shown.stdout}"
  stopped = lp_command(slurm, launchpad_home, "stop", name)
  assert stopped.returncode == 0, stopped.stderr
  assert not wait_for_empty_queue(slurm), "the stopped run's jobs are still queued"
  log = (launchpad_home / "runs" / name / "launcher.log").read_text()
  assert f"stopping: `lp stop {name}`" in log, log
  assert "idler[0] | idle 0 stopped" in log and "idler[1] | idle 1 stopped" in log, log


def test_a_preemption_notice_stops_an_attached_run_gracefully(slurm, lp_child):
  child = lp_child("--preempt-signal=USR1@60", IDLE)
  wait_for_idlers(child)
  [job] = launcher_jobs(slurm, "idle")
  # What Slurm does before the time limit: the signal to the batch script.
  assert slurm.run("scancel", "--signal=USR1", "--batch", job).returncode == 0
  assert child.finish() == 128 + signal.SIGUSR1, child.output()  # stopped by that signal
  assert f"Slurm job {job} of group 'idler' got SIGUSR1" in child.err(), child.err()
  assert "idler[0] | idle 0 stopped" in child.out()


def test_slurms_own_notice_before_the_time_limit_stops_an_attached_run_gracefully(lp_child):
  # A time limit of 2 minutes and a notice 60 s before it. slurmctld looks at
  # time limits every 30 s and sends a notice once it is due within the next
  # 30 s: between 30 and 60 s after the job started, and 30 s or more before
  # Slurm would end the job.
  child = lp_child("--preempt-signal=USR1@60", LIMITED, "--", "--time_limit=2")
  assert child.finish(NOTICE_TIMEOUT) == 128 + signal.SIGUSR1, child.output()
  assert re.search(r"Slurm job \d+ of group 'idler' got SIGUSR1", child.err()), child.err()
  for index in (0, 1):  # every node that came up saw the stop
    assert f"idle {index} up" not in child.out() or f"idle {index} stopped" in child.out()
  assert "idle 0 stopped" in child.out() or "idle 1 stopped" in child.out(), child.output()


def test_a_preemption_notice_requeues_a_detached_run(slurm, launchpad_home):
  result = lp_launch(
    slurm, launchpad_home, "--detach", "--preempt-signal=USR1@60", "--requeue", IDLE
  )
  assert result.returncode == 0, result.stdout + result.stderr
  job, name = re.search(r"submitted as Slurm job (\d+), run (\S+)\.", result.stdout).groups()
  log = launchpad_home / "runs" / name / "launcher.log"
  wait_until(lambda: "idle 1 up" in text_of(log) and "idle 0 up" in text_of(log), "nodes up")
  assert slurm.run("scancel", "--signal=USR1", "--batch", job).returncode == 0

  def requeued() -> bool:  # back in the queue: Slurm starts it again in ~2 minutes
    state = (job_field(slurm, job, "Restarts"), job_field(slurm, job, "JobState"))
    return state == ("1", "PENDING")

  wait_until(requeued, "the launcher's job requeued")
  slurm.run("scancel", job)
  text = log.read_text()
  assert "got SIGUSR1, its notice of the time limit" in text, text
  assert "idler[0] | idle 0 stopped" in text and f"requeueing Slurm job {job}" in text, text


# Refusals.


def test_requests_slurm_refuses_fail_naming_the_group_before_anything_runs(slurm, launched):
  program = lp.Program("refused")
  program.add_node(lp.PyNode(print, "never"), label="learner")
  program.add_node(lp.PyNode(print, "never"), label="actor")
  cases = [
    (lp.SlurmResources(partition="nope"), "Invalid partition name specified"),
    (lp.SlurmResources(gpus=3), "Requested node configuration is not available"),
    (lp.SlurmResources(constraint="infiniband"), "Invalid feature specification"),
  ]
  for resources, said in cases:
    with pytest.raises(SlurmError) as refusal:
      launched(program, local_resources={"learner": resources})
    assert "Slurm refuses the job of group 'learner'" in str(refusal.value)
    assert said in str(refusal.value)
    assert slurm.jobs() == []
  assert not (pathlib.Path(os.environ["LAUNCHPAD_HOME"]) / "runs").exists()


def test_without_slurm_on_path_the_launch_says_what_to_install(tmp_path, monkeypatch, launched):
  monkeypatch.setenv("PATH", str(tmp_path))
  program = lp.Program("nowhere")
  program.add_node(lp.PyNode(print, "never"), label="node")
  with pytest.raises(
    SlurmError, match="sbatch, srun, squeue, scancel, scontrol, sinfo are not on PATH"
  ):
    launched(program)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"cpus": 0}, "cpus must be a whole number >= 1"),
    ({"gpus": 1.5}, "gpus must be a whole number >= 0"),
    ({"mem": "4X"}, "mem must be megabytes"),
    ({"time": "soon"}, "time must be minutes"),
    ({"time": "-5"}, "time must be minutes"),
    ({"sbatch_options": ["--time=5"]}, "use the field time instead"),
    ({"sbatch_options": "--qos=high"}, "must be a list of strings"),
  ],
)
def test_slurm_resources_reject_bad_values_saying_what_to_give(kwargs, message):
  with pytest.raises((ValueError, TypeError), match=re.escape(message)):
    lp.SlurmResources(**kwargs)


def test_options_that_need_a_detached_run_are_refused_attached(launched):
  program = lp.Program("options")
  program.add_node(lp.PyNode(print, "never"), label="node")
  with pytest.raises(lp.ProgramError, match=r"requeue=True needs a detached run"):
    launched(program, requeue=True)
  with pytest.raises(ValueError, match=r"preempt_signal='KILL@60'"):
    launched(program, preempt_signal="KILL@60")


def test_a_run_whose_launcher_is_on_another_host_is_not_taken_for_over(launchpad_home):
  run = runs.create("elsewhere")
  run.write("127.0.0.1:1", b"s" * 32)
  info = {**run.info(), "launcher_host": "compute-17", "launcher_pid": 2**22 + 1}
  (run.path / "run.json").write_text(json.dumps(info))
  assert not run.over()
  assert [r.name for r in runs.current()] == [run.name]


# The DQN example.


def test_the_dqn_example_runs_on_slurm(slurm, launchpad_home, tmp_path):
  pytest.importorskip("gymnasium")
  pytest.importorskip("matplotlib")
  run_dir = tmp_path / "run"
  result = lp_launch(
    slurm,
    launchpad_home,
    f"--log-dir={run_dir}",
    "examples/dqn/launch.py",
    "--",
    "--num_actors=2",
    "--min_replay_size=100",
    "--eval_period=200",
    "--max_env_steps=800",
    "--target_return=1000",
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert "reached the budget of 800; stopping the program" in result.stdout, result.stdout
  assert (run_dir / "dqn_evaluations.csv").stat().st_size > 0

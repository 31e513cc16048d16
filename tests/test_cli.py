"""Tests of the `lp` command: `lp launch`, `lp status`, `lp stop`, as real processes.

Target programs are in tests/launch/programs/. Every `lp` process gets a
temporary $LAUNCHPAD_HOME and runs in a session of its own, so that it alone
receives the signals the tests send.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from child_process import Child

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "launch" / "programs"
# Bound on every wait for a line or an exit; a healthy run takes a second or two.
TIMEOUT = 20.0
READY = re.compile(r"^server\[(\d+)\] \| READY (\d+)$")


@pytest.fixture
def lp_env(tmp_path, monkeypatch):
  """The environment of `lp` processes: run directories under tmp_path, and
  tests/launch importable (for `programs.module:function` targets)."""
  home = tmp_path / "lphome"
  monkeypatch.setenv("LAUNCHPAD_HOME", str(home))
  path = os.pathsep.join(
    p for p in (str(ROOT / "tests" / "launch"), os.environ.get("PYTHONPATH")) if p
  )
  return {**os.environ, "LAUNCHPAD_HOME": str(home), "PYTHONPATH": path}


def lp_command() -> list[str]:
  return [sys.executable, "-m", "launchpad.cli"]


class Lp(Child):
  """An `lp` process; its stdout is read line by line as it comes."""

  def __init__(self, args, env, command=None):
    self.args = args
    super().__init__(
      [*(command or lp_command()), *args], TIMEOUT, env=env, cwd=ROOT, start_new_session=True
    )


@pytest.fixture
def lp(lp_env):
  """Starts `lp` processes; kills those still running at teardown."""
  started = []

  def _start(*args, command=None):
    started.append(Lp(list(args), lp_env, command))
    return started[-1]

  yield _start
  for process in started:
    process.kill()


def run_lp(lp_env, *args, timeout=TIMEOUT) -> subprocess.CompletedProcess:
  """Runs a short `lp` command to its end."""
  return subprocess.run(
    [*lp_command(), *args],
    capture_output=True,
    text=True,
    env=lp_env,
    cwd=ROOT,
    timeout=timeout,
  )


def alive(pid: int) -> bool:
  """True while `pid` runs (a zombie has ended; only its exit status is left)."""
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def wait_all_gone(pids, timeout: float = 10.0) -> None:
  """Polls until no process of `pids` runs: process death announces itself to
  nobody but its parent."""
  deadline = time.monotonic() + timeout
  while True:
    left = [pid for pid in pids if alive(pid)]
    if not left:
      return
    if time.monotonic() > deadline:
      descriptions = []
      for pid in left:
        try:
          descriptions.append(f"{pid} {psutil.Process(pid).cmdline()}")
        except psutil.Error:
          descriptions.append(str(pid))
      pytest.fail(f"processes still running {timeout} s later: {descriptions}")
    time.sleep(0.05)


def program(name: str) -> str:
  return str(PROGRAMS / name)


# Help and command line.


def test_launch_help_mentions_modes_targets_and_exit_statuses(lp_env):
  script = pathlib.Path(sys.executable).with_name("lp")
  command = [str(script)] if script.exists() else lp_command()
  result = subprocess.run(
    [*command, "launch", "--help"],
    capture_output=True,
    text=True,
    env=lp_env,
    cwd=ROOT,
    timeout=TIMEOUT,
  )
  assert result.returncode == 0, result.stderr
  text = result.stdout
  for mode in ("multiprocess", "threads", "test", "local_mp", "local_mt", "test_mt", "test_mp"):
    assert mode in text
  assert "--mode" in text
  assert "--grace-period" in text
  assert "--log-dir" in text
  assert "--terminal" in text
  assert "agent.py:make_program" in text
  assert "package.module:make_program" in text
  assert "exit status" in text
  for status in ("0 program ended normally", "1 a node failed", "2 bad command line", "130", "143"):
    assert status in text


def test_lp_without_a_command_or_with_a_bad_mode_exits_2(lp_env):
  result = run_lp(lp_env)
  assert result.returncode == 2
  assert "usage: lp" in result.stderr
  result = run_lp(lp_env, "launch", "--mode=warp", program("lp_greeting.py"))
  assert result.returncode == 2
  assert "invalid choice: 'warp'" in result.stderr


# Targets.


def test_launch_multiprocess_example_prefixes_node_lines(lp):
  process = lp(
    "launch",
    "--mode=multiprocess",
    "examples/consumer_producers.py",
    "--",
    "--num_producers=3",
    "--num_steps=3",
  )
  assert process.finish() == 0, process.output()
  lines = process.out().splitlines()
  assert lines == [f"consumer[0] | Step {k}: results [0, 1, 2]" for k in range(3)], process.output()


def test_launch_threads_example_shares_the_launchers_output(lp):
  process = lp(
    "launch",
    "--mode=threads",
    "examples/consumer_producers.py",
    "--",
    "--num_producers=3",
    "--num_steps=3",
  )
  assert process.finish() == 0, process.output()
  # `lp launch --help`: "in threads and test modes nodes share this
  # process's output" (no prefixes: those come with node processes).
  steps = [f"Step {k}: results [0, 1, 2]" for k in range(3)]
  assert process.out().splitlines() == steps, process.output()


@pytest.mark.parametrize(
  "target",
  [
    "tests/launch/programs/lp_greeting.py",
    "tests/launch/programs/lp_greeting.py:make_program",
    "programs.lp_greeting:make_program",
  ],
  ids=["file", "file_function", "module_function"],
)
def test_launch_targets_receive_their_flags(lp, target):
  greeting = f"hi-{abs(hash(target)) % 10000}"
  process = lp("launch", target, "--", f"--greeting={greeting}")
  assert process.finish() == 0, process.output()
  assert process.out().splitlines() == [f"greeter[0] | GREETING {greeting}"], process.output()


def test_crashing_node_exits_1_naming_the_node_with_its_traceback(lp):
  process = lp("launch", "--grace-period=2", f"{program('lp_crash.py')}:make_program")
  assert process.finish() == 1, process.output()
  assert "crasher[0] | about to explode" in process.out().splitlines()
  stderr = process.err()
  assert "lp launch: node crasher[0] failed: ValueError: boom 17" in stderr
  assert "Traceback (most recent call last)" in stderr
  assert "in explode" in stderr


@pytest.mark.parametrize(
  ("target", "message"),
  [
    (
      "tests/launch/programs/no_such_file.py",
      "no such file: tests/launch/programs/no_such_file.py",
    ),
    (
      "tests/launch/programs/no_such_file.py:make_program",
      "no such file: tests/launch/programs/no_such_file.py",
    ),
    (
      "tests/launch/programs/lp_greeting.py:no_such_function",
      "has no function 'no_such_function'",
    ),
    (
      "tests/launch/programs/lp_greeting.py:not_a_program",
      "not_a_program() returned 42, not a lp.Program",
    ),
    ("no_such_package_lp.module:make_program", "cannot import no_such_package_lp.module"),
  ],
  ids=["missing_file", "missing_file_function", "missing_function", "not_a_program", "no_module"],
)
def test_bad_target_exits_2_with_a_clear_message(lp_env, target, message):
  result = run_lp(lp_env, "launch", target)
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stderr.startswith("lp launch: "), result.stderr
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_unpicklable_node_argument_exits_2_naming_the_node_and_the_path(lp_env):
  result = run_lp(lp_env, "launch", f"{program('lp_unpicklable.py')}:make_program")
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stderr.startswith("lp launch: node holder[0] cannot be sent"), result.stderr
  assert "['kwargs']['lock']" in result.stderr
  assert "lock" in result.stderr
  assert "Traceback" not in result.stderr


# Output.


def test_lines_of_concurrent_nodes_never_interleave(lp, tmp_path):
  num_printers, num_lines, long_line = 6, 300, 100_000
  log_dir = tmp_path / "logs"
  process = lp(
    "launch",
    f"--log-dir={log_dir}",
    f"{program('lp_printers.py')}:make_program",
    "--",
    f"--num_printers={num_printers}",
    f"--num_lines={num_lines}",
    f"--long_line={long_line}",
  )
  assert process.finish() == 0, process.output()
  line_re = re.compile(r"^printer\[(\d+)\] \| (printer (\d+) (?:line (\d+) (x+)|long (y+)))$")
  expected = {}
  for i in range(num_printers):
    own = [f"printer {i} line {k} " + "x" * (k % 50 + 1) for k in range(num_lines)]
    own.insert(num_lines // 2 + 1, f"printer {i} long " + "y" * long_line)
    expected[i] = own
  seen = {i: [] for i in range(num_printers)}
  for line in process.out().splitlines():
    match = line_re.match(line)
    assert match, f"a cut or mixed line: {line[:200]!r}"
    assert match.group(1) == match.group(3), f"a line under another node's name: {line[:200]!r}"
    seen[int(match.group(1))].append(match.group(2))
  for i in range(num_printers):
    assert seen[i] == expected[i], f"printer[{i}]'s lines differ"
    log = (log_dir / f"printer[{i}].log").read_text().splitlines()
    assert log == expected[i], f"printer[{i}].log differs"


def test_output_to_files_keeps_node_lines_off_the_terminal(lp, tmp_path):
  log_dir = tmp_path / "logs"
  process = lp(
    "launch",
    "--terminal=output_to_files",
    f"--log-dir={log_dir}",
    f"{program('lp_greeting.py')}:make_program",
    "--",
    "--greeting=quietly",
  )
  assert process.finish() == 0, process.output()
  assert "GREETING" not in process.out()
  assert "greeter[0]" not in process.out()
  assert (log_dir / "greeter[0].log").read_text() == "GREETING quietly\n"


# Signals.


def start_servers(lp, *options, num_servers=2, stubborn=False):
  """`lp launch` of lp_serving.py; returns the process and the node pids
  once every node serves."""
  target_args = [f"--num_servers={num_servers}"] + (["--stubborn"] if stubborn else [])
  process = lp("launch", *options, f"{program('lp_serving.py')}:make_program", "--", *target_args)
  ready = process.wait_for(READY, count=num_servers)
  pids = {f"server[{m.group(1)}]": int(m.group(2)) for m in ready}
  assert len(pids) == num_servers
  return process, pids


@pytest.mark.parametrize(
  ("signum", "status"),
  [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
  ids=["SIGINT", "SIGTERM"],
)
def test_signal_stops_the_program_gracefully(lp, signum, status):
  grace = 5.0
  process, pids = start_servers(lp, f"--grace-period={grace}")
  start = time.monotonic()
  os.kill(process.pid, signum)
  assert process.finish() == status, process.output()
  elapsed = time.monotonic() - start
  assert elapsed < grace, f"the nodes were not stopped gracefully: {elapsed:.2f} s"
  lines = process.out().splitlines()
  for name in pids:
    assert f"{name} | STOP_HANDLER" in lines, process.output()
    assert f"{name} | EXITING" in lines, process.output()
  wait_all_gone(pids.values())


def test_node_ignoring_the_stop_is_killed_after_the_grace_period(lp):
  process, pids = start_servers(lp, "--grace-period=1", stubborn=True)
  start = time.monotonic()
  os.kill(process.pid, signal.SIGINT)
  assert process.finish() == 130, process.output()
  elapsed = time.monotonic() - start
  assert 1.0 <= elapsed < 9.0, f"lp exited {elapsed:.2f} s after SIGINT"
  lines = process.out().splitlines()
  for name in pids:
    assert f"{name} | STOP_HANDLER" in lines
    assert f"{name} | EXITING" not in lines
  wait_all_gone(pids.values())


def test_second_sigint_kills_at_once(lp):
  process, pids = start_servers(lp, "--grace-period=30", stubborn=True)
  os.kill(process.pid, signal.SIGINT)
  # Every node has seen the stop; none will end by itself.
  process.wait_for(re.compile(r"^server\[\d+\] \| STOP_HANDLER$"), count=len(pids))
  start = time.monotonic()
  os.kill(process.pid, signal.SIGINT)
  assert process.finish() == 130, process.output()
  assert time.monotonic() - start < 5.0
  wait_all_gone(pids.values())


def test_no_node_outlives_lp_killed_with_sigkill(lp):
  process, pids = start_servers(lp, num_servers=3)
  descendants = {p.pid: p for p in psutil.Process(process.pid).children(recursive=True)}
  assert set(pids.values()) <= set(descendants)
  fork_servers = set(descendants) - set(pids.values())
  assert fork_servers, "the fork server is not among lp's descendants"
  os.kill(process.pid, signal.SIGKILL)
  assert process.finish() == -signal.SIGKILL
  wait_all_gone([*pids.values(), *fork_servers], timeout=10.0)


# lp status and lp stop.


def test_status_lists_a_running_program_and_stop_stops_it(lp, lp_env):
  process, pids = start_servers(lp)
  runs_dir = pathlib.Path(lp_env["LAUNCHPAD_HOME"]) / "runs"
  [run_dir] = list(runs_dir.iterdir())
  run = run_dir.name
  assert run.startswith("serving-")

  # `lp status RUN` takes the run's name or an unambiguous prefix of it.
  for args in (["status"], ["status", run], ["status", "serv"]):
    result = run_lp(lp_env, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(
      rf"^{re.escape(run)}\s+program=serving\s+running\s+launcher pid={process.pid}$", lines[0]
    ), result.stdout
    assert lines[1].split() == ["NODE", "STATE", "PID", "RESTARTS", "CPU%", "MEM", "MB"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(pids), result.stdout
    for name, pid in pids.items():
      _, state, node_pid, restarts, cpu, mem = rows[name]
      assert (state, int(node_pid), int(restarts)) == ("running", pid, 0)
      assert float(cpu) >= 0
      assert float(mem) > 0

  result = run_lp(lp_env, "stop", run)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f"stopping {run}"
  assert process.finish() == 0, process.output()
  for name in pids:
    assert f"{name} | STOP_HANDLER" in process.out().splitlines()

  result = run_lp(lp_env, "status")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "no running programs"


def test_stop_of_an_unknown_run_exits_2(lp_env):
  result = run_lp(lp_env, "stop", "nonexistent")
  assert result.returncode == 2
  assert "lp stop: no running program matches 'nonexistent'" in result.stderr
  result = run_lp(lp_env, "status")
  assert result.returncode == 0
  assert result.stdout.strip() == "no running programs"

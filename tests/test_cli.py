"""Tests of the `lp` command: `lp launch`, `lp status`, `lp stop`, as real processes.

Target programs are in tests/launch/programs/. Every `lp` process gets a
temporary $LAUNCHPAD_HOME and runs in a session of its own, so that it alone
receives the signals the tests send.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest
from child_process import Child

from launchpad import runs

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


@pytest.mark.parametrize("mode", ["test", "test_mt", "threads", "test_mp"])
def test_a_crash_exits_1_in_every_mode(lp, mode):
  """The test kinds too: `lp launch` waits for their programs as for any other."""
  process = lp(
    "launch", f"--mode={mode}", "--grace-period=2", f"{program('lp_crash.py')}:make_program"
  )
  assert process.finish() == 1, process.output()
  assert "lp launch: node crasher[0] failed: ValueError: boom 17" in process.err()


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


@pytest.mark.parametrize("mode", ["multiprocess", "threads"])
@pytest.mark.parametrize("target", ["lp_unpicklable.py", "lp_unpicklable.py:make_program"])
def test_unpicklable_node_argument_exits_2_naming_the_node_and_the_path(lp_env, mode, target):
  result = run_lp(lp_env, "launch", f"--mode={mode}", program(target))
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


# User errors: every command says what is wrong in one paragraph, with a
# documented exit status, and never prints a traceback.

GREETING = "tests/launch/programs/lp_greeting.py"


@pytest.mark.parametrize(
  ("args", "status", "message"),
  [
    (
      ["launch", "--tls-cert={tmp}/cert.pem", GREETING],
      2,
      "lp launch: --tls-cert needs --tls-key (its private key).\n",
    ),
    (
      ["launch", "--tls-key={tmp}/key.pem", GREETING],
      2,
      "lp launch: --tls-key and --tls-ca go with --tls-cert (your own certificate).\n",
    ),
    (
      ["launch", "--tls-cert={tmp}/cert.pem", "--tls-key={tmp}/key.pem", GREETING],
      2,
      "lp launch: cannot read {tmp}/cert.pem (No such file or directory); --tls-cert, "
      "--tls-key and --tls-ca name PEM files.\n",
    ),
    (
      ["launch", "--mode=ssh", GREETING],
      2,
      "lp launch: --mode=ssh needs --hosts HOSTS.toml (see docs/remote.md).\n",
    ),
    (
      ["launch", "--mode=ssh", "--hosts={tmp}/hosts.toml", f"{GREETING}:make_program"],
      2,
      "lp launch: hosts file {tmp}/hosts.toml does not exist.\n",
    ),
    (
      ["launch", f"{GREETING}:make_program", "--", "--no_such_flag=1"],
      2,
      f"lp launch: {GREETING}: Unknown command line flag 'no_such_flag' (the arguments after "
      "-- are the target's flags).\n",
    ),
    (
      ["launch", "--log-dir={tmp}/a-file", f"{GREETING}:make_program"],
      2,
      "lp launch: {tmp}/a-file is not a directory; choose a directory (or a new path).\n",
    ),
    (
      ["launch", "--grace-period=-1", GREETING],
      2,
      "lp launch: error: argument --grace-period: expected a number 0 or more, got '-1'\n",
    ),
    (
      ["status", "nosuch"],
      2,
      "lp status: no running program matches 'nosuch'; running: none.\n",
    ),
    (
      ["status", "--watch", "nosuch"],
      2,
      "lp status: no running program matches 'nosuch'; running: none.\n",
    ),
    (
      ["status", "--watch", "--interval=0"],
      2,
      "lp status: error: argument --interval: expected a number greater than 0, got '0'\n",
    ),
    (["top", "nosuch"], 2, "lp top: no running program matches 'nosuch'; running: none.\n"),
    (
      ["top", "--iterations=x"],
      2,
      "lp top: error: argument --iterations: expected a number greater than 0, got 'x'\n",
    ),
    (["stop"], 2, "lp stop: error: the following arguments are required: run\n"),
    (["stop", "nosuch"], 2, "lp stop: no running program matches 'nosuch'; running: none.\n"),
    (
      ["graph", "tests/launch/programs/no_such_file.py"],
      2,
      "lp graph: no such file: tests/launch/programs/no_such_file.py\n",
    ),
    (
      ["graph", f"{GREETING}:no_such_function"],
      2,
      f"lp graph: {GREETING} has no function 'no_such_function'; name one that returns a "
      "lp.Program.\n",
    ),
    (
      ["graph", "-o", "{tmp}/no_such_dir/program.dot", f"{GREETING}:make_program"],
      2,
      "lp graph: cannot write {tmp}/no_such_dir/program.dot (No such file or directory); "
      "choose another -o FILE.\n",
    ),
    (["graph", "--format=pdf", GREETING], 2, "lp graph: error: argument --format: invalid"),
    (["warp"], 2, "lp: error: argument command: invalid choice: 'warp'"),
  ],
  ids=[
    "launch_cert_without_key",
    "launch_key_without_cert",
    "launch_missing_cert",
    "launch_ssh_without_hosts",
    "launch_missing_hosts_file",
    "launch_unknown_target_flag",
    "launch_log_dir_is_a_file",
    "launch_negative_grace_period",
    "status_unknown_run",
    "status_watch_unknown_run",
    "status_bad_interval",
    "top_unknown_run",
    "top_bad_iterations",
    "stop_without_run",
    "stop_unknown_run",
    "graph_missing_file",
    "graph_missing_function",
    "graph_unwritable_output",
    "graph_bad_format",
    "unknown_command",
  ],
)
def test_user_errors_exit_with_their_status_and_one_paragraph(
  lp_env, tmp_path, args, status, message
):
  (tmp_path / "a-file").write_text("")
  args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
  message = message.replace("{tmp}", str(tmp_path))
  result = run_lp(lp_env, *args)
  assert result.returncode == status, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  if ": error: " in message:  # argparse's: the usage, then the error
    assert result.stderr.startswith("usage: lp"), result.stderr
    assert message in result.stderr, result.stderr
  else:
    assert result.stderr == message
  assert result.stdout == ""


def run_lp_into_a_closed_pipe(lp_env, *args, buffered=True) -> subprocess.CompletedProcess:
  """Runs `lp` as in `lp ARGS | head -1` once head has exited: nothing reads
  its stdout. Buffered, the broken pipe shows when lp flushes its output;
  unbuffered, at the first write."""
  env = {k: v for k, v in lp_env.items() if k != "PYTHONUNBUFFERED"}
  if not buffered:
    env["PYTHONUNBUFFERED"] = "1"
  read_end, write_end = os.pipe()
  os.close(read_end)
  try:
    return subprocess.run(
      [*lp_command(), *args],
      stdout=write_end,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=ROOT,
      timeout=TIMEOUT,
    )
  finally:
    os.close(write_end)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
  "args", [["status"], ["graph", f"{GREETING}:make_program"]], ids=["status", "graph"]
)
def test_a_closed_stdout_ends_lp_quietly_with_sigpipes_status(lp_env, args, buffered):
  result = run_lp_into_a_closed_pipe(lp_env, *args, buffered=buffered)
  assert result.returncode == 128 + signal.SIGPIPE, result.stderr
  assert result.stderr == ""


# Run directories: readable by their owner only.


@pytest.fixture
def open_umask():
  """umask 0 for the test's `lp` processes: only the modes lp asks for count."""
  old = os.umask(0)
  yield
  os.umask(old)


def mode(path: pathlib.Path) -> int:
  return stat.S_IMODE(path.lstat().st_mode)


def test_run_directory_token_and_logs_are_readable_by_the_owner_only(lp, tmp_path, open_umask):
  log_dir = tmp_path / "logs"
  process, pids = start_servers(lp, f"--log-dir={log_dir}")
  assert mode(log_dir) == 0o700
  for name in ("token", "run.json", *(f"{node}.log" for node in pids)):
    assert mode(log_dir / name) == 0o600, name
  os.kill(process.pid, signal.SIGTERM)
  assert process.finish() == 143, process.output()


@pytest.mark.parametrize("owner", ["another_user", "you"])
def test_launch_refuses_a_log_dir_others_can_write_and_leaves_its_token_alone(
  lp_env, tmp_path, owner
):
  if owner == "another_user" and os.geteuid() != 0:
    pytest.skip("handing a directory to another user needs root")
  theirs = tmp_path / "shared"
  theirs.mkdir()
  planted = theirs / "token"
  planted.write_text("planted")
  os.chmod(planted, 0o666)
  if owner == "another_user":
    os.chown(planted, 65534, 65534)
    os.chown(theirs, 65534, 65534)
    expected = (
      f"lp launch: the directory {theirs} belongs to user nobody (uid 65534), not to you: its "
      "owner could read or replace the program's token; choose a directory of your own.\n"
    )
  else:
    os.chmod(theirs, 0o777)
    expected = (
      f"lp launch: the directory {theirs} can be written by other users (mode 777): they could "
      f"replace the program's token; make it private (chmod 700 {theirs}) or choose another "
      "directory.\n"
    )
  result = run_lp(lp_env, "launch", f"--log-dir={theirs}", f"{GREETING}:make_program")
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stderr == expected
  assert [p.name for p in theirs.iterdir()] == ["token"]
  assert planted.read_text() == "planted"


# lp status beside runs it cannot query.


def fake_run(runs_dir: pathlib.Path, name: str, info, token: bool = True) -> None:
  """A run directory as a launcher leaves it, made by hand."""
  path = runs_dir / name
  path.mkdir(mode=0o700)
  (path / "run.json").write_text(info if isinstance(info, str) else json.dumps(info))
  if token:
    (path / "token").write_text("not the token")


@pytest.fixture
def stand_in_launcher():
  """A live process that listens nowhere, as the launcher of runs made by hand."""
  process = subprocess.Popen(
    [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
  )
  yield process.pid
  process.kill()
  process.wait(TIMEOUT)


def test_status_shows_every_run_it_cannot_query_in_a_row_of_its_own_beside_a_live_one(
  lp, lp_env, stand_in_launcher
):
  process, pids = start_servers(lp)
  runs_dir = pathlib.Path(lp_env["LAUNCHPAD_HOME"]) / "runs"
  [live] = [p.name for p in runs_dir.iterdir()]
  closed = socket.socket()
  closed.bind(("127.0.0.1", 0))
  gone = f"127.0.0.1:{closed.getsockname()[1]}"
  closed.close()
  with socket.socket() as black_hole:  # listens, never accepts: connections hang
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    hole = f"127.0.0.1:{black_hole.getsockname()[1]}"
    # The launchers of these runs live, and do not listen at their coordinators' addresses.
    launcher = {"launcher_pid": stand_in_launcher}
    fake_run(runs_dir, "a-coordinator-gone", {"coordinator": gone, **launcher})
    fake_run(runs_dir, "b-black-hole", {"coordinator": hole, **launcher})
    fake_run(runs_dir, "c-no-token", {"coordinator": hole, **launcher}, token=False)
    fake_run(runs_dir, "d-bad-json", "{not json")
    fake_run(runs_dir, "e-open-to-all", {"coordinator": hole, **launcher})
    os.chmod(runs_dir / "e-open-to-all", 0o777)
    fake_run(runs_dir, "f-ended", {"coordinator": hole, **launcher, "ended": time.time()})

    start = time.monotonic()
    result = run_lp(lp_env, "status", timeout=30.0)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    heads = {line.split()[0]: line.split() for line in lines if not line.startswith(" ")}
    assert {name: head[1] for name, head in heads.items()} == {
      "a-coordinator-gone": "unreachable",
      "b-black-hole": "not-answering",
      "c-no-token": "no-token",
      "d-bad-json": "broken",
      "e-open-to-all": "unsafe",
      live: "program=serving",
    }, result.stdout
    assert heads[live][2] == "running", result.stdout
    assert heads["a-coordinator-gone"][2:] == ["launcher", f"pid={stand_in_launcher}"]
    assert heads["d-bad-json"][2:] == ["launcher", "pid=-"]
    # Below each row that cannot be queried, why.
    details = {lines[i - 1].split()[0]: line.strip() for i, line in enumerate(lines) if i}
    assert details["a-coordinator-gone"].startswith(
      f"nothing answers at the coordinator's address {gone}"
    )
    first = runs.FIRST_QUERY_SECONDS
    assert details["b-black-hole"].startswith(
      f"the coordinator at {hole} did not answer within {first:g} s"
    )
    assert details["c-no-token"].startswith(f"{runs_dir / 'c-no-token' / 'token'} is missing")
    assert details["d-bad-json"].startswith(f"{runs_dir / 'd-bad-json' / 'run.json'} cannot be")
    assert details["e-open-to-all"].startswith(
      f"the directory {runs_dir / 'e-open-to-all'} can be written by other users"
    )
    # The live run's table is whole.
    nodes = {line.split()[0]: line.split() for line in lines if line.startswith("  server[")}
    assert {name: row[1] for name, row in nodes.items()} == dict.fromkeys(pids, "running")

    # Commands about one of them say what is wrong, and exit 1.
    result = run_lp(lp_env, "stop", "b-black-hole", timeout=30.0)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(
      f"lp stop: b-black-hole: the coordinator at {hole} did not answer within"
    )
    result = run_lp(lp_env, "top", "c-no-token", timeout=30.0)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("lp top: c-no-token: ")
    result = run_lp(lp_env, "status", "d-bad", timeout=30.0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["d-bad-json", "broken"]

  # The live run's table, into a pipe nobody reads.
  start = time.monotonic()
  result = run_lp_into_a_closed_pipe(lp_env, "status", live)
  alone = time.monotonic() - start
  assert result.returncode == 128 + signal.SIGPIPE, result.stderr
  assert result.stderr == ""
  # Beside the live run, the broken runs cost about the black hole's first
  # bound, not the QUERY_SECONDS that a run looking alive may take (the
  # margin is for a loaded machine: the old bound took all of QUERY_SECONDS).
  assert elapsed < alone + (first + 3 * runs.QUERY_SECONDS) / 4, (elapsed, alone)
  os.kill(process.pid, signal.SIGTERM)
  assert process.finish() == 143, process.output()

"""Tests of the live view (`lp status --watch`, `lp top`) and of launch progress.

The programs run for real, in processes (`lp top` then reads them from
another process, as from another shell) and in threads; the stats they show
travel from each node's process to the coordinator (stats.py).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from child_process import Child

import launchpad as lp
from launchpad import live_view
from launchpad.control import control_pb2
from launchpad.replay import Table

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 20.0
NUM_ITEMS = 5
HEADER = re.compile(r"^NODE\s+STATE\s+RESTARTS\s+HOST\s+PID\s+CPU%\s+MEM MB\s+CALLS/S\s+ERRORS/S$")


class Echo:
  def ping(self) -> str:
    return "pong"


def caller(echo) -> None:
  """Calls echo about a hundred times a second until the program stops."""
  while not lp.wait_for_stop(0.01):
    echo.ping()


def filler(replay, num_items: int) -> None:
  """Inserts `num_items` items, then waits for the stop."""
  for i in range(num_items):
    replay.insert({"x": np.int32(i)}, priorities={"q": 1.0})
  lp.wait_for_stop()


def make_program() -> lp.Program:
  program = lp.Program("watched")
  echo = program.add_node(lp.CourierNode(Echo), label="echo")
  replay = program.add_node(lp.ReplayNode([Table.queue("q", 100)]), label="replay")
  program.add_node(lp.PyNode(caller, echo), label="caller")
  program.add_node(lp.PyNode(filler, replay, NUM_ITEMS), label="filler")
  return program


def wait_for_stats(controller: lp.Controller) -> None:
  """Polls until the nodes' processes have reported the calls and the items:
  reports come once a second and announce themselves to nobody."""
  deadline = time.monotonic() + TIMEOUT
  while True:
    nodes = {node.node: node for node in controller.status().nodes}
    echo, replay = nodes["echo[0]"].stats, nodes["replay[0]"].stats
    if echo.calls_per_second > 0 and [t.size for t in replay.tables] == [NUM_ITEMS]:
      return
    if time.monotonic() > deadline:
      pytest.fail(f"no stats of the calls and items within {TIMEOUT} s: {nodes}")
    time.sleep(0.1)


def parse_frame(text: str) -> tuple[str, dict[str, dict[str, str]], list[str]]:
  """The title, the rows (node -> column -> cell) and the other lines of the last frame."""
  lines = text.rstrip("\n").split("\n")
  start = max(i for i, line in enumerate(lines) if HEADER.match(line))
  title, columns = lines[start - 1], live_view.COLUMNS
  rows, others = {}, []
  for line in lines[start + 1 :]:
    cells = line.split()  # "MEM MB" is one column with one-word cells
    if line.startswith(" ") or len(cells) != len(columns):
      others.append(line.strip())  # replay tables, notes
    else:
      rows[cells[0]] = dict(zip(columns, cells, strict=True))
  return title, rows, others


def check_frame(text: str, shared_process: bool) -> dict[str, dict[str, str]]:
  """Checks what every frame of the watched program must show; returns its rows."""
  title, rows, others = parse_frame(text)
  assert "program=watched  running" in title
  assert set(rows) == {"echo[0]", "replay[0]", "caller[0]", "filler[0]"}
  for row in rows.values():
    assert row["STATE"] == "running"
    assert float(row["CPU%"]) >= 0 and float(row["MEM MB"]) > 0
  assert float(rows["echo[0]"]["CALLS/S"]) > 0
  assert rows["caller[0]"]["CALLS/S"] == "-"  # a PyNode serves nothing
  assert f"table q: size {NUM_ITEMS}/100" in " ".join(others)
  pids = {row["PID"] for row in rows.values()}
  assert len(pids) == (1 if shared_process else 4)
  footnote = "CPU% and MEM MB are per process: nodes with the same HOST and PID share them."
  assert (footnote in others) == shared_process
  return rows


# Multiprocess: `lp top` and `lp status --watch` in another process.


@pytest.fixture(scope="module")
def lp_home(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    home = tmp_path_factory.mktemp("lphome")
    patch.setenv("LAUNCHPAD_HOME", str(home))
    yield home


@pytest.fixture(scope="module")
def watched(lp_home):
  """The program in processes, once its stats have come."""
  controller = lp.launch(
    make_program(), launch_type="test_mp", terminal="output_to_files", grace_period=2.0
  )
  try:
    wait_for_stats(controller)
    yield controller
  finally:
    controller.stop(timeout=TIMEOUT)


def lp_command(*args: str) -> list[str]:
  return [sys.executable, "-m", "launchpad.cli", *args]


@pytest.mark.parametrize("command", [["top"], ["status", "--watch"]], ids=["top", "status_watch"])
def test_watch_shows_states_usage_call_rates_and_replay_tables_of_node_processes(watched, command):
  result = subprocess.run(
    lp_command(*command, "--iterations=2", "--interval=0.2"),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert result.returncode == 0, result.stderr
  assert "\x1b" not in result.stdout  # not a terminal: plain tables
  frames = result.stdout.split("\n\n")
  assert len([f for f in frames if f.strip()]) == 2
  rows = check_frame(result.stdout, shared_process=False)
  assert rows["echo[0]"]["ERRORS/S"] == "0.0"
  assert {row["PID"] for row in rows.values()} == {str(node.pid) for node in watched.status().nodes}


def test_ctrl_c_ends_the_watch_cleanly(watched):
  watch = Child(lp_command("top", "--interval=0.2"), TIMEOUT, start_new_session=True)
  try:
    watch.wait_for(HEADER, count=2)
    os.kill(watch.pid, signal.SIGINT)
    assert watch.finish() == 0, watch.output()
    assert "Traceback" not in watch.err()
  finally:
    watch.kill()


def test_watch_ends_by_itself_when_the_program_ends(lp_home):
  controller = lp.launch(
    make_program(), launch_type="test_mp", terminal="output_to_files", grace_period=2.0
  )
  run = controller.run_dir.name
  watch = Child(lp_command("status", "--watch", "--interval=0.2", run), TIMEOUT)
  try:
    watch.wait_for(HEADER)
    controller.stop(timeout=TIMEOUT)
    assert watch.finish() == 0, watch.output()
    assert watch.out().rstrip().endswith("the program has ended."), watch.output()
  finally:
    watch.kill()
    controller.stop(timeout=TIMEOUT)


def test_watch_without_a_running_program_says_so(tmp_path):
  result = subprocess.run(
    lp_command("top"),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env={**os.environ, "LAUNCHPAD_HOME": str(tmp_path)},
  )
  assert result.returncode == 2
  assert result.stderr.startswith("lp top: no running programs; start one with `lp launch`.")


# Threads: one process, so CPU and memory are shared, but counters are per node.


def test_watch_of_the_threads_launcher_keeps_counters_per_node(lp_launch):
  controller = lp_launch(make_program())
  wait_for_stats(controller)
  out = io.StringIO()
  assert live_view.watch(controller.status, "watched", out, interval=0.1, iterations=2) == 0
  rows = check_frame(out.getvalue(), shared_process=True)
  assert rows["echo[0]"]["PID"] == str(os.getpid())


# Rendering, without a program.


def status(*states: str, stopping: bool = False) -> control_pb2.StatusReply:
  return control_pb2.StatusReply(
    program="p",
    stopping=stopping,
    reason="a test" if stopping else "",
    nodes=[control_pb2.NodeStatus(node=f"n[{i}]", state=s) for i, s in enumerate(states)],
  )


def test_figures_a_process_stopped_reporting_are_flagged_as_old():
  reply = status("running", "running")
  usage = control_pb2.ProcessUsage(cpu_percent=50, memory_bytes=2**30)
  reply.nodes[0].usage.CopyFrom(usage)
  reply.nodes[0].stats_age = live_view.STALE_SECONDS + 1
  reply.nodes[1].usage.CopyFrom(usage)
  reply.nodes[1].stats_age = 0.5
  text = live_view.frame(reply, "p")
  _, rows, others = parse_frame(text)
  assert set(rows) == {"n[0]", "n[1]"}
  assert (rows["n[0]"]["CPU%"], rows["n[0]"]["MEM MB"]) == ("50", "1024")
  [old] = [line for line in others if line.startswith("no report")]
  assert old.startswith("no report for over 5 s from the processes of n[0]: their figures are old")


class Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_on_a_terminal_each_frame_replaces_the_last():
  out = Terminal()
  live_view.watch(lambda: status("running"), "p", out, interval=0.01, iterations=3)
  frames = out.getvalue().split(live_view.CLEAR_SCREEN)
  assert frames[0] == "" and len(frames) == 4
  assert all(HEADER.match(frame.splitlines()[1]) for frame in frames[1:])


def test_watch_ends_at_once_when_every_node_has_ended_or_the_coordinator_is_gone():
  out = io.StringIO()
  assert live_view.watch(lambda: status("finished", "failed"), "p", out, interval=60) == 0
  assert out.getvalue().endswith("p: the program has ended.\n")
  assert out.getvalue().count("NODE") == 1

  def gone():
    raise lp.ProgramStoppedError("the coordinator cannot be reached")

  out = io.StringIO()
  assert live_view.watch(gone, "p", out, interval=60) == 0
  assert out.getvalue() == "p: the program has ended.\n"


# Launch progress.


def test_launch_progress_is_a_few_lines_not_a_stream():
  out, now = io.StringIO(), [0.0]
  progress = live_view.LaunchProgress("p", out, grace_period=10.0, start=0.0, clock=lambda: now[0])

  def at(t: float, reply: control_pb2.StatusReply) -> list[str]:
    before = len(out.getvalue().splitlines())
    now[0] = t
    progress.update(reply)
    return out.getvalue().splitlines()[before:]

  assert at(0.5, status("running", "pending", "pending")) == []  # quick launches say nothing yet
  assert at(1.0, status("running", "pending", "pending")) == ["lp launch: p: 1/3 nodes started"]
  assert at(1.5, status("running", "running", "pending")) == []  # a line a second at most
  assert at(2.0, status("running", "running", "pending")) == ["lp launch: p: 2/3 nodes started"]
  for t in range(3, 12):
    assert at(t, status("running", "running", "pending")) == []  # no news: quiet for 10 s
  assert at(12.0, status("running", "running", "pending")) == ["lp launch: p: 2/3 nodes started"]
  assert at(12.25, status("running", "finished", "running")) == [
    "lp launch: p: all 3 nodes started (12.2 s)"
  ]
  assert at(15.0, status("running", "finished", "running")) == []

  assert at(20.0, status("running", "finished", "running", stopping=True)) == []
  assert at(20.5, status("running", "finished", "running", stopping=True)) == []
  assert at(21.0, status("running", "finished", "running", stopping=True)) == [
    "lp launch: p: stopping: 2 nodes still running (forced in 9 s): n[0], n[2]"
  ]
  assert at(21.5, status("finished", "finished", "running", stopping=True)) == []
  assert at(22.0, status("finished", "finished", "running", stopping=True)) == [
    "lp launch: p: stopping: 1 nodes still running (forced in 8 s): n[2]"
  ]
  assert at(23.0, status("finished", "finished", "finished", stopping=True)) == []


def wait_for_stderr(child: Child, text: str) -> None:
  """Polls the child's stderr (read by a thread of Child) until `text` shows."""
  deadline = time.monotonic() + TIMEOUT
  while text not in child.err():
    if time.monotonic() > deadline:
      pytest.fail(f"no {text!r} on stderr within {TIMEOUT} s{child.output()}")
    time.sleep(0.05)


def test_lp_launch_reports_progress_of_the_start_and_of_a_slow_stop(tmp_path):
  target = "tests/launch/programs/lp_serving.py:make_program"
  launch = Child(
    lp_command("launch", "--grace-period=2", target, "--", "--num_servers=2", "--stubborn"),
    TIMEOUT,
    cwd=ROOT,
    env={**os.environ, "LAUNCHPAD_HOME": str(tmp_path)},
    start_new_session=True,
  )
  try:
    launch.wait_for(re.compile(r"^server\[\d\] \| READY \d+$"), count=2)
    wait_for_stderr(launch, "lp launch: serving: all 2 nodes started")
    os.kill(launch.pid, signal.SIGINT)
    assert launch.finish() == 130, launch.output()
  finally:
    launch.kill()
  progress = [line for line in launch.err().splitlines() if line.startswith("lp launch: serving:")]
  # A slow start (a loaded machine) shows how far it got before all nodes are up.
  progress = [line for line in progress if not re.match(r"^lp launch: serving: \d+/2 nodes", line)]
  assert re.match(r"^lp launch: serving: all 2 nodes started \(\d+\.\d s\)$", progress[0])
  stops = progress[1:]
  assert 1 <= len(stops) <= 2, launch.output()
  assert re.match(
    r"^lp launch: serving: stopping: 2 nodes still running \((forced in \d+ s|being forced)\): "
    r"server\[0\], server\[1\]$",
    stops[0],
  )

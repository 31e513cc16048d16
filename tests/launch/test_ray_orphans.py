"""What a Ray node starts ends with it, on a cluster the launcher starts.

Each test runs a launcher in a process of its own (its cluster is its own
too); the node starts a plain child and a daemon (a grandchild in a session
of its own whose parent exited), and writes their pids down. The program
then ends normally, or its launcher is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytest.importorskip("launchpad.launch.ray", reason="needs ray")

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Bound on a launch on a new local cluster, and on the descendants' end.
TIMEOUT = 120.0

_LAUNCHER = textwrap.dedent(
  """
  import json
  import os
  import subprocess
  import sys
  import launchpad as lp

  def start_descendants(pids_file, then_wait):
    plain = subprocess.Popen(["sleep", "600"]).pid
    read, write = os.pipe()
    if os.fork() == 0:  # the daemon: double fork, a session of its own
      os.setsid()
      if os.fork() == 0:
        os.write(write, str(os.getpid()).encode())
        os.execvp("sleep", ["sleep", "601"])
      os._exit(0)
    os.close(write)
    daemon = int(os.read(read, 32))
    with open(pids_file + ".tmp", "w") as f:
      json.dump({"node": os.getpid(), "plain": plain, "daemon": daemon}, f)
    os.rename(pids_file + ".tmp", pids_file)
    if then_wait:
      lp.wait_for_stop()

  program = lp.Program("orphans")
  program.add_node(lp.PyNode(start_descendants, sys.argv[1], sys.argv[2] == "wait"))
  lp.launch(program, launch_type="ray", grace_period=2.0).wait()
  print("ended", flush=True)
  """
)


def start_launcher(tmp_path: pathlib.Path, mode: str) -> tuple[subprocess.Popen, pathlib.Path]:
  drop = ("RAY_ADDRESS", "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper")
  env = {key: value for key, value in os.environ.items() if key not in drop}
  env.update(LAUNCHPAD_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
  pids = tmp_path / "pids.json"
  launcher = subprocess.Popen(
    [sys.executable, "-c", _LAUNCHER, str(pids), mode],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=tmp_path,
    start_new_session=True,
  )
  return launcher, pids


def alive(pid: int) -> bool:
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def left_after(pids: dict[str, int], timeout: float) -> dict[str, int]:
  """The processes of `pids` still running once all ended or `timeout` passed."""
  deadline = time.monotonic() + timeout
  while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
    time.sleep(0.1)
  return {name: pid for name, pid in pids.items() if alive(pid)}


def kill_all(pids: dict[str, int]) -> None:
  for pid in pids.values():
    try:
      psutil.Process(pid).kill()
    except psutil.Error:
      pass


def read_pids(path: pathlib.Path, launcher: subprocess.Popen) -> dict[str, int]:
  deadline = time.monotonic() + TIMEOUT
  while not path.exists():
    if launcher.poll() is not None or time.monotonic() > deadline:
      launcher.kill()
      out, err = launcher.communicate()
      pytest.fail(f"the node never wrote its descendants' pids:\n{out}\n{err}")
    time.sleep(0.1)
  return json.loads(path.read_text())


def test_a_nodes_daemon_ends_with_the_program(tmp_path):
  launcher, path = start_launcher(tmp_path, "return")
  try:
    out, err = launcher.communicate(timeout=TIMEOUT)
  finally:
    launcher.kill()
  assert launcher.returncode == 0 and "ended" in out, err
  pids = json.loads(path.read_text())
  left = left_after({"plain": pids["plain"], "daemon": pids["daemon"]}, TIMEOUT)
  kill_all(left)
  assert left == {}, "still running after the program ended"


def test_a_nodes_descendants_end_when_the_launcher_is_killed(tmp_path):
  launcher, path = start_launcher(tmp_path, "wait")
  try:
    pids = read_pids(path, launcher)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.communicate(timeout=TIMEOUT)
    left = left_after(pids, TIMEOUT)
  finally:
    launcher.kill()
    # What the killed launcher's cluster may have left (it should leave nothing).
    try:
      os.killpg(launcher.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  kill_all(left)
  assert left == {}, "still running after the launcher was killed"

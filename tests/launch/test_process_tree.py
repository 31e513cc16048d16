"""Every process a node starts ends with the node, however the program ends.

Spawner nodes (tests/launch/programs/tree.py) start a plain child, a child in
a session of its own and a daemon re-parented away from them. Every process
of a launch carries an environment marker, so the tests find whatever is
left of a program with psutil, as the SSH tests do.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import psutil
import pytest

import launchpad as lp
from tests.child_process import Child
from tests.launch import test_ssh
from tests.launch.programs import tree
from tests.launch.test_processes import alive, client, node_statuses, wait_until
from tests.launch.test_ssh import MARKER, REPO, assert_none_left, launch_command, write_hosts_file
from tests.launching import launching

# The SSH tests' fixtures: a real sshd, both hosts, a marker of each test.
sshd, hosts, marker = test_ssh.sshd, test_ssh.hosts, test_ssh.marker
TIMEOUT = 30.0
SPAWNED = re.compile(r".*SPAWNED (\d+) (\d+) (\d+)$")

launched = launching(launch_type="local_mp", terminal="output_to_files", grace_period=5.0)


@pytest.fixture
def marked(marker, monkeypatch):
  """The marker in this process's environment: the launches of the test pass
  it to their fork server, and so to every node and descendant."""
  monkeypatch.setenv(MARKER, marker)
  return marker


def assert_started(pids: list[int], marker: str) -> None:
  """The descendants run, and carry the launch's marker."""
  for pid in pids:
    assert alive(pid), f"descendant {pid} is not running"
    assert psutil.Process(pid).environ().get(MARKER) == marker


def wait_gone(pids: list[int], timeout: float = TIMEOUT) -> None:
  """Waits until none of `pids` runs; fails naming those that still do."""
  processes = []
  for pid in pids:
    try:
      processes.append(psutil.Process(pid))
    except psutil.NoSuchProcess:
      continue
  _, left = psutil.wait_procs(processes, timeout=timeout)
  assert not left, f"descendants outlived their node: {[p.pid for p in left]}"


def spawned_pids(log: str) -> list[int]:
  """The pids a spawner printed in its log."""
  match = next(SPAWNED.match(line) for line in log.splitlines() if SPAWNED.match(line))
  return [int(pid) for pid in match.groups()]


def gate_program(name: str, count: int = 1):
  program = lp.Program(name)
  with program.group("spawner"):
    gates = [program.add_node(lp.CourierNode(tree.Gate)) for _ in range(count)]
  return program, gates


def release(gate) -> None:
  try:
    client(gate).release()
  except lp.ConnectionLostError:
    pass  # the gate may end before its reply leaves: it was released


# Multiprocess.


@pytest.mark.parametrize(
  "resource", [None, lp.PythonProcess(args=("--fresh",))], ids=["forked", "fresh_interpreter"]
)
def test_descendants_end_when_the_program_ends_normally(launched, marked, resource):
  program, [gate] = gate_program("tree_normal")
  resources = {"spawner": resource} if resource else None
  controller = launched(program, local_resources=resources)
  pids = client(gate).spawn()
  assert_started(pids, marked)
  release(gate)
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  wait_gone(pids)
  assert_none_left(marked)


def test_descendants_end_when_another_node_crashes(launched, marked):
  controller = launched(tree.make_crashing_program())
  with pytest.raises(lp.NodeFailedError, match=r"crasher\[0\]"):
    controller.wait(TIMEOUT)
  pids = spawned_pids((controller.run_dir / "spawner[0].log").read_text())
  wait_gone(pids)
  assert_none_left(marked)


def test_a_node_that_ends_takes_its_own_descendants_only(launched, marked):
  program, [first, second] = gate_program("tree_siblings", count=2)
  controller = launched(program)
  first_pids = client(first).spawn()
  second_pids = client(second).spawn()
  assert_started(first_pids + second_pids, marked)
  release(first)
  wait_until(lambda: node_statuses(controller)["spawner[0]"].state == "finished")
  wait_gone(first_pids)
  assert node_statuses(controller)["spawner[1]"].state == "running"
  assert_started(second_pids, marked)  # the daemon of the other node too
  release(second)
  assert controller.wait(TIMEOUT) is True
  wait_gone(second_pids)


def test_descendants_end_when_the_launcher_is_killed(marker, tmp_path):
  env = {"LAUNCHPAD_HOME": str(tmp_path / "lphome"), MARKER: marker}
  launcher = Child(
    [sys.executable, tree.__file__], timeout=TIMEOUT, cwd=REPO, env={**os.environ, **env}
  )
  try:
    [match] = launcher.wait_for(SPAWNED)
    pids = [int(pid) for pid in match.groups()]
    assert_started(pids, marker)
  finally:
    launcher.process.send_signal(signal.SIGKILL)
    launcher.process.wait(TIMEOUT)
  wait_gone(pids)
  assert_none_left(marker)


# SSH hosts.


def test_descendants_on_a_host_end_when_the_program_ends(hosts, marker):
  hosts["groups"] = {"spawner": "alpha"}
  controller = lp.launch(tree.make_returning_program(), launch_type="ssh", hosts=hosts)
  assert controller.wait(60) is True
  assert controller.failures() == []
  wait_gone(spawned_pids((controller.run_dir / "spawner[0].log").read_text()))
  assert_none_left(marker)


def test_descendants_on_a_host_end_when_a_node_on_another_crashes(hosts, marker):
  hosts["groups"] = {"spawner": "alpha", "crasher": "beta"}
  controller = lp.launch(tree.make_crashing_program(), launch_type="ssh", hosts=hosts)
  with pytest.raises(lp.NodeFailedError, match=r"crasher\[0\]"):
    controller.wait(60)
  wait_gone(spawned_pids((controller.run_dir / "spawner[0].log").read_text()))
  assert_none_left(marker)


def test_descendants_on_a_host_end_when_the_launcher_is_killed(hosts, marker, tmp_path):
  hosts["groups"] = {"spawner": "beta"}
  hosts_file = write_hosts_file(hosts, tmp_path / "hosts.toml")
  target = f"{tree.__file__}:make_waiting_program"
  launcher = Child(launch_command(hosts_file, tmp_path / "run", target), timeout=60, cwd=REPO)
  try:
    [match] = launcher.wait_for(SPAWNED)
    pids = [int(pid) for pid in match.groups()]
    assert_started(pids, marker)
  finally:
    launcher.process.kill()
    launcher.process.wait(10)
  wait_gone(pids)
  assert_none_left(marker)

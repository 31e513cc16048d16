"""How a node's end is told: exit status 0 is a finished node, anything else
a failure described as what happened, and one node's end never kills the
others. Nodes in tests/launch/programs/exits.py."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import uuid

import pytest

import launchpad as lp
from tests.launch.programs import exits, nodes
from tests.launch.test_processes import alive, client, log_lines, node_pids, wait_until
from tests.launching import launching

TIMEOUT = 30.0
REPO = pathlib.Path(__file__).resolve().parents[2]

multiprocess = launching(launch_type="local_mp", terminal="output_to_files", grace_period=5.0)
threads = launching(launch_type="test", grace_period=5.0)

# How a node ends with status 0: its PyNode's function and arguments.
CLEAN_EXITS = {
  "sys.exit(0)": (exits.call_sys_exit, 0),
  "sys.exit()": (exits.call_sys_exit,),
  "os._exit(0)": (exits.call_os_exit_zero,),
}


def _state(controller, name: str) -> str:
  """The coordinator's state of node `name`."""
  return next(n.state for n in controller.status().nodes if n.node == name)


def exiting_program(name: str, exiter: lp.PyNode):
  """The exiting node beside a server that runs until the stop."""
  program = lp.Program(name)
  program.add_node(exiter, label="exiter")
  server = program.add_node(lp.CourierNode(nodes.Producer, 2), label="server")
  return program, server


def assert_finished_while_the_program_runs(controller, server) -> None:
  ended = ("finished", "failed")
  wait_until(lambda: _state(controller, "exiter[0]") in ended, TIMEOUT, "exiter[0] ending")
  assert _state(controller, "exiter[0]") == "finished"
  assert controller.wait(0.2) is False, "the program went on"
  assert client(server).work(3) == 6
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


@pytest.mark.parametrize("how", list(CLEAN_EXITS))
def test_exit_status_0_is_a_finished_node_in_processes(multiprocess, how):
  program, server = exiting_program("clean_exit_mp", lp.PyNode(*CLEAN_EXITS[how]))
  controller = multiprocess(program)
  assert_finished_while_the_program_runs(controller, server)
  assert log_lines(controller, "exiter[0]")[0].startswith("calling ")


@pytest.mark.parametrize("how", ["sys.exit(0)", "sys.exit()"])
def test_sys_exit_0_is_a_finished_node_in_threads(threads, how):
  program, server = exiting_program("clean_exit_mt", lp.PyNode(*CLEAN_EXITS[how]))
  assert_finished_while_the_program_runs(threads(program), server)


@pytest.mark.parametrize("launcher", ["multiprocess", "threads"])
def test_sys_exit_3_is_a_failure_naming_the_status(request, launcher):
  launch = request.getfixturevalue(launcher)
  program, _ = exiting_program(f"exit_3_{launcher}", lp.PyNode(exits.call_sys_exit, 3))
  controller = launch(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  assert info.value.node == "exiter[0]"
  assert info.value.description == "SystemExit: 3"
  assert "call_sys_exit" in info.value.remote_traceback


@pytest.mark.parametrize(
  "raiser, description",
  [
    (exits.raise_boom, "Boom: a BaseException subclass from the node's code"),
    (exits.raise_keyboard_interrupt, "KeyboardInterrupt: "),
    (exits.raise_boom_then_explode, "Boom: a BaseException subclass from the node's code"),
  ],
  ids=["base_exception_subclass", "keyboard_interrupt", "then_another_after_the_node"],
)
def test_a_base_exception_fails_its_node_only_and_is_named(multiprocess, raiser, description):
  controller = multiprocess(exits.make_three_nodes(lp.PyNode(raiser)))
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.node == "last[0]"
  assert error.description == description
  assert raiser.__name__ in error.remote_traceback
  assert "SIGKILL" not in str(error) and "out-of-memory" not in str(error)
  assert [record.name for record in controller.failures()] == ["last[0]"]
  # The servers started before it served on until the program's stop, and
  # ended by themselves: nobody killed them.
  for k in range(2):
    assert f"server {k} ends" in log_lines(controller, f"server[{k}]")


def test_a_base_exception_after_the_nodes_code_never_reaches_the_fork_server(multiprocess):
  # Raised in the node's process once its code returned, where no code of the
  # node catches it: it must end that process alone (the fork server's own
  # loop must never see it: its cleanup kills every node).
  program = lp.Program("late_exception")
  servers = [program.add_node(lp.CourierNode(nodes.Producer, k), label="server") for k in (1, 2)]
  program.add_node(lp.PyNode(exits.explode_after_returning), label="last")
  controller = multiprocess(program)
  pids = [client(server).pid() for server in servers]
  wait_until(lambda: "last[0]" in node_pids(controller), TIMEOUT, "last[0]'s pid")
  last_pid = node_pids(controller)["last[0]"]
  wait_until(lambda: not alive(last_pid), TIMEOUT, "last[0] ending")
  wait_until(lambda: "Boom" in "".join(log_lines(controller, "last[0]")), TIMEOUT, "its traceback")
  assert [client(server).work(5) for server in servers] == [5, 10]
  assert [client(server).pid() for server in servers] == pids
  assert _state(controller, "last[0]") == "finished"  # its code returned
  assert controller.wait(0.2) is False
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  log = "\n".join(log_lines(controller, "last[0]"))
  assert "exits.Boom: raised in the node's process after its code returned" in log


def test_sigkill_from_another_process_names_no_out_of_memory_killer(multiprocess):
  program, server = exiting_program("killed", lp.PyNode(nodes.quick))
  controller = multiprocess(program)
  os.kill(client(server).pid(), signal.SIGKILL)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  assert info.value.node == "server[0]"
  assert info.value.description == "the process was killed by SIGKILL"


# The kernel's out-of-memory killer, for real: in a memory cgroup of its own.


def memory_cgroup(tmp_name: str) -> pathlib.Path:
  """A new cgroup v1 memory cgroup under this process's; skips the test
  where none can be made (not root, no writable memory controller)."""
  for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
    _, controllers, path = line.split(":", 2)
    if "memory" in controllers.split(","):
      group = pathlib.Path(f"/sys/fs/cgroup/memory{path}") / tmp_name
      try:
        group.mkdir()
      except OSError as e:
        pytest.skip(f"cannot make a memory cgroup ({e}); the test needs root")
      return group
  pytest.skip("no cgroup v1 memory controller")


def test_the_out_of_memory_killer_is_named_when_it_killed_the_node(tmp_path):
  group = memory_cgroup(f"lp-oom-{uuid.uuid4().hex[:8]}")
  try:
    (group / "memory.limit_in_bytes").write_text(str(400 << 20))
    env = {**os.environ, "LAUNCHPAD_HOME": str(tmp_path / "lphome"), "PYTHONPATH": str(REPO)}
    join = (group / "cgroup.procs").as_posix()
    launcher = subprocess.run(
      [sys.executable, exits.__file__],
      preexec_fn=lambda: pathlib.Path(join).write_text(str(os.getpid())),
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    procs = group / "cgroup.procs"
    wait_until(lambda: not procs.read_text().split(), TIMEOUT, "the cgroup emptying")
    group.rmdir()
  lines = launcher.stdout.splitlines()
  assert "FAILURES last[0]" in lines, launcher.stdout + launcher.stderr
  [failed] = [line for line in lines if line.startswith("FAILED")]
  assert failed.startswith(
    "FAILED last[0]: the process was killed by SIGKILL, by the kernel's out-of-memory killer"
  ), failed

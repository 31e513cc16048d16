"""A node's traceback names the user's file and line and shows the line, in every launcher.

Nodes travel to their processes, hosts and actors as pickles, in which
functions of the launched script (`__main__`) and of modules registered by
value, like this one, travel by value. Each launcher gets two programs whose
node raises: one launched from a script with `lp launch` (the printed
failure is checked), one built here (the NodeFailedError is checked). Where
the node runs in another process, the script removes itself before the node
raises, as on a host that does not have the launcher's files: the line must
still show.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import cloudpickle
import pytest

import launchpad as lp
from tests.launch import test_ray, test_ssh
from tests.launching import launching

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Bound on every program and command of these tests.
TIMEOUT = 60.0
THIS_FILE = pathlib.Path(__file__)
TEST_MODULE_RAISE = 'raise ValueError("raised in the test module")'
SCRIPT_RAISE = 'raise ValueError("raised in the launched script")'

launched = launching(grace_period=2.0)
# The SSH tests' loopback sshd and hosts, and the Ray tests' local instance.
sshd, hosts, marker = test_ssh.sshd, test_ssh.hosts, test_ssh.marker
cluster = test_ray.cluster

SCRIPT = '''\
"""A launched program whose node raises (tests/launch/test_tracebacks.py)."""

import os
import time

from absl import app

import launchpad as lp

REMOVE_ITSELF = {remove_itself}
TIMEOUT = {timeout}


def explode() -> None:
  {raise_line}


def wait_then_explode(script: str) -> None:
  """Raises, once the launcher has removed `script` if it removes it."""
  deadline = time.monotonic() + TIMEOUT
  while REMOVE_ITSELF and os.path.exists(script):
    if time.monotonic() > deadline:
      raise TimeoutError(f"the launcher did not remove {{script}} within {{TIMEOUT}} s")
    time.sleep(0.05)  # nothing announces a removal: look again
  explode()


def main(argv: list[str]) -> None:
  program = lp.Program("tracebacks")
  program.add_node(lp.PyNode(wait_then_explode, __file__), label="exploder")
  lp.launch(program)
  if REMOVE_ITSELF:
    os.remove(__file__)  # the node runs where its file no longer exists


if __name__ == "__main__":
  app.run(main)
'''


def explode_in_test_module() -> None:
  raise ValueError("raised in the test module")


def frame(path: pathlib.Path, function: str, source: str) -> str:
  """The lines of a traceback for line `source` of `path`, in `function`:
  the file, the line's number and the line itself."""
  numbers = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip() == source]
  assert len(numbers) == 1, f"{source!r} is not one line of {path}"
  return f'  File "{path}", line {numbers[0]}, in {function}\n    {source}\n'


def write_script(directory: pathlib.Path, remove_itself: bool) -> tuple[pathlib.Path, str]:
  """The script to launch, and the traceback lines its node's failure must show
  (read before the script may remove itself)."""
  script = directory / "launched_script.py"
  script.write_text(
    SCRIPT.format(remove_itself=remove_itself, timeout=TIMEOUT, raise_line=SCRIPT_RAISE)
  )
  return script, frame(script, "explode", SCRIPT_RAISE)


def lp_launch(*args: str) -> subprocess.CompletedProcess:
  """Runs `lp launch` to its end; its output."""
  return subprocess.run(
    [sys.executable, "-m", "launchpad.cli", "launch", "--grace-period=2", *args],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )


def assert_prints_the_frame(result: subprocess.CompletedProcess, expected: str) -> None:
  assert result.returncode == 1, result.stderr
  assert "lp launch: node exploder[0] failed: ValueError: raised in the launched script" in (
    result.stderr
  )
  assert expected in result.stderr, result.stderr


def assert_fails_with_the_frame(controller: lp.Controller) -> None:
  with pytest.raises(lp.NodeFailedError) as failure:
    controller.wait(TIMEOUT)
  expected = frame(THIS_FILE, "explode_in_test_module", TEST_MODULE_RAISE)
  assert failure.value.node == "crasher[0]"
  assert expected in failure.value.remote_traceback
  assert expected in str(failure.value)
  assert expected in controller.failures()[0].traceback


def crashing_program() -> lp.Program:
  program = lp.Program("tracebacks")
  program.add_node(lp.PyNode(explode_in_test_module), label="crasher")
  return program


# The launchers of one host: `lp launch --mode` and its launch type.
LOCAL = {"threads": "local_mt", "test": "test_mt", "multiprocess": "local_mp"}


@pytest.mark.parametrize("mode", LOCAL)
def test_lp_launch_prints_the_line_of_the_script_that_raised(tmp_path, mode):
  # Threads run in the launcher, where a removed file has no lines, as in any
  # Python traceback; node processes have the source the launcher sent.
  script, expected = write_script(tmp_path, remove_itself=mode == "multiprocess")
  assert_prints_the_frame(lp_launch(f"--mode={mode}", str(script)), expected)


@pytest.mark.parametrize("mode", LOCAL)
def test_a_node_failure_shows_the_line_of_the_test_module_that_raised(launched, mode):
  assert_fails_with_the_frame(launched(crashing_program(), launch_type=LOCAL[mode]))


def test_ssh_lp_launch_prints_the_line_of_a_script_the_host_does_not_have(hosts, marker, tmp_path):
  script, expected = write_script(tmp_path, remove_itself=True)
  hosts_file = test_ssh.write_hosts_file(hosts, tmp_path / "hosts.toml")
  command = test_ssh.launch_command(hosts_file, tmp_path / "run", "--grace-period=2", str(script))
  result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
  assert_prints_the_frame(result, expected)
  test_ssh.assert_none_left(marker)


def test_ssh_node_failure_shows_the_line_of_the_test_module_that_raised(launched, hosts, marker):
  assert_fails_with_the_frame(launched(crashing_program(), launch_type="ssh", hosts=hosts))
  test_ssh.assert_none_left(marker)


def test_ray_lp_launch_prints_the_line_of_a_script_the_actor_does_not_have(cluster, tmp_path):
  script, expected = write_script(tmp_path, remove_itself=True)
  assert_prints_the_frame(
    lp_launch("--mode=ray", f"--ray-address={cluster}", str(script)), expected
  )


def test_ray_node_failure_shows_the_line_of_the_test_module_that_raised(launched, cluster):
  assert_fails_with_the_frame(launched(crashing_program(), launch_type="ray"))

"""The SSH launcher against a real sshd on two loopback "hosts" (tests/sshd.py)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import sys
import time
import uuid

import numpy as np
import psutil
import pytest

import launchpad as lp
from launchpad import errors, runs
from launchpad.control.client import ControlClient
from launchpad.courier.client import Client
from launchpad.tls import TlsConfig
from tests.child_process import Child
from tests.launch.programs import remote
from tests.sshd import HOSTS, LoopbackSshd

MARKER = "LAUNCHPAD_TEST_MARKER"
PROGRAMS = pathlib.Path(remote.__file__)
REPO = PROGRAMS.parents[3]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
  server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
  server.start()
  yield server
  server.stop()


@pytest.fixture
def marker():
  """A value in every remote process's environment, to find them all."""
  return uuid.uuid4().hex


@pytest.fixture
def hosts(sshd, marker, tmp_path):
  """Both hosts; each test maps groups to them."""
  contents = sshd.hosts(env={MARKER: marker}, workdir=str(tmp_path / "work"))
  contents["groups"] = {"*": list(HOSTS)}
  return contents


def remote_processes(marker: str) -> list[psutil.Process]:
  found = []
  for process in psutil.process_iter():
    try:
      if process.environ().get(MARKER) == marker:
        found.append(process)
    except psutil.Error:
      continue
  return found


def assert_none_left(marker: str) -> None:
  """Every process started on the hosts ends (by itself) within 30 s."""
  _, alive = psutil.wait_procs(remote_processes(marker), timeout=30)
  assert not alive, f"processes left on the hosts: {[p.cmdline() for p in alive]}"


def test_nodes_on_two_hosts_exchange_numpy_arrays(hosts, marker, capfd, tmp_path):
  tool = tmp_path / "ship" / "bin" / "tool"
  tool.parent.mkdir(parents=True)
  tool.write_text("#!/bin/sh\necho TOOL RAN\n")
  tool.chmod(0o755)
  hosts["ship"] = [str(tool.parent)]
  hosts["groups"] = {"echo": "alpha", "caller": "beta"}
  controller = lp.launch(remote.make_program(), launch_type="ssh", hosts=hosts)
  assert controller.wait(60)
  log = (controller.run_dir / "caller[0].log").read_text()
  assert "TOOL RAN" in log, "the shipped executable ran in the node's working directory"
  nbytes = remote.ARRAY_ELEMENTS * 4
  assert f"EXCHANGED {nbytes} bytes with {HOSTS['alpha']} from {HOSTS['beta']}" in log
  module = re.search(r"MODULE (\S+)", log).group(1)
  assert not module.startswith(str(REPO)), "the node imported the repository, not the bundle"
  assert module.endswith("tests/launch/programs/remote.py")
  assert "caller[0]@beta | EXCHANGED" in capfd.readouterr().out
  assert_none_left(marker)


def node_tcp_address(run: runs.Run, node: str) -> str:
  endpoint = run.control_client().resolve(node, 30)
  return next(a for a in endpoint.addresses if not a.startswith("unix:"))


def test_calls_without_the_program_secret_are_refused(hosts, marker):
  hosts["groups"] = {"echo": "alpha", "caller": "beta"}
  controller = lp.launch(remote.make_program(then_wait=True), launch_type="ssh", hosts=hosts)
  try:
    address = node_tcp_address(runs.Run(controller.run_dir), "echo[0]")
    assert address.startswith(HOSTS["alpha"])
    with pytest.raises(errors.AuthenticationError, match="refused this client's secret"):
      Client(address, secret=os.urandom(32), timeout=10).echo(np.ones(4))
    info = runs.Run(controller.run_dir).info()
    stranger = ControlClient(info["coordinator"], secret=os.urandom(32))
    with pytest.raises(errors.AuthenticationError):
      stranger.status()
  finally:
    controller.stop()
  assert_none_left(marker)


def write_hosts_file(contents: dict, path: pathlib.Path) -> pathlib.Path:
  """The hosts file for `contents` (TOML; JSON strings are valid TOML strings)."""
  lines = []
  for name, host in contents["hosts"].items():
    lines.append(f"[hosts.{name}]")
    for key, value in host.items():
      if isinstance(value, dict):
        value = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
      else:
        value = json.dumps(value)
      lines.append(f"{key} = {value}")
  lines.append("[groups]")
  lines += [
    f"{json.dumps(group)} = {json.dumps(names)}" for group, names in contents["groups"].items()
  ]
  path.write_text("\n".join(lines) + "\n")
  return path


def launch_command(hosts_file: pathlib.Path, run_dir: pathlib.Path, *args: str) -> list[str]:
  lp_main = "from launchpad.cli import main; raise SystemExit(main())"
  return [
    sys.executable,
    "-c",
    lp_main,
    "launch",
    "--mode=ssh",
    f"--hosts={hosts_file}",
    f"--log-dir={run_dir}",
    *args,
  ]


def wait_for_stats(run: runs.Run, node: str, timeout: float = 30.0):
  """The node's status once its process has reported stats (once a second)."""
  client = run.control_client()
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    status = next(n for n in client.status().nodes if n.node == node)
    if status.HasField("usage"):
      return status
    time.sleep(0.1)  # nothing signals a report: poll the coordinator
  pytest.fail(f"node {node} reported no stats within {timeout} s")


def test_tls_between_hosts(hosts, marker, tmp_path):
  hosts["groups"] = {"echo": "alpha", "caller": "beta"}
  hosts_file = write_hosts_file(hosts, tmp_path / "hosts.toml")
  target = f"{PROGRAMS}:make_exchange_then_wait"
  child = Child(launch_command(hosts_file, tmp_path / "run", "--tls", target), timeout=60, cwd=REPO)
  try:
    child.wait_for(re.compile(r".*EXCHANGED \d+ bytes"))  # numpy went over TLS
    run = runs.Run(tmp_path / "run")
    tls = TlsConfig.read(run.path)
    assert tls is not None, "the run keeps its certificate for lp commands"
    address = node_tcp_address(run, "echo[0]")
    with pytest.raises(errors.AuthenticationError, match="refused this client's secret"):
      Client(address, secret=os.urandom(32), tls=tls, timeout=10).echo(np.ones(4))
    with pytest.raises(errors.CallTimeoutError):  # no TLS: the server never greets it
      Client(address, secret=os.urandom(32), timeout=2).echo(np.ones(4))
    plain = ControlClient(run.info()["coordinator"], token=run.token())
    with pytest.raises(errors.ProgramStoppedError, match="cannot be reached"):
      plain.status()
    echo = wait_for_stats(run, "echo[0]")  # what lp top shows comes over TLS too
    assert echo.usage.memory_bytes > 0 and echo.stats.calls >= 1
  finally:
    child.process.send_signal(signal.SIGINT)
    assert child.process.wait(60) == 128 + signal.SIGINT, child.output()
  assert_none_left(marker)


def test_a_crash_on_one_host_stops_every_node(hosts, marker):
  hosts["groups"] = {"server": "alpha", "waiter": "alpha", "crash": "beta"}
  controller = lp.launch(remote.make_crashing_program(), launch_type="ssh", hosts=hosts)
  with pytest.raises(lp.NodeFailedError, match=r"crash\[0\]") as failure:
    controller.wait(60)
  assert "the crash node failed on purpose" in str(failure.value)
  assert isinstance(failure.value.__cause__, ValueError)
  assert [record.name for record in controller.failures()] == ["crash[0]"]
  assert_none_left(marker)


def test_sigkill_of_the_launcher_leaves_no_process_on_any_host(hosts, marker, tmp_path):
  hosts_file = write_hosts_file(hosts, tmp_path / "hosts.toml")
  target = f"{PROGRAMS}:make_waiting_program"
  child = Child(launch_command(hosts_file, tmp_path / "run", target), timeout=60, cwd=REPO)
  try:
    child.wait_for(re.compile(r"waiter\[\d\]@(alpha|beta) \| READY"), count=4)
    nodes = remote_processes(marker)
    hosts_seen = {p.environ().get("LAUNCHPAD_HOST") for p in nodes}
    assert set(HOSTS.values()) <= hosts_seen, "nodes run on both hosts"
  finally:
    child.process.kill()
    child.process.wait(10)
  assert_none_left(marker)


def test_an_unreachable_host_is_named_with_its_nodes(sshd, hosts, marker):
  hosts["hosts"]["beta"]["ssh_options"] += ["-o", "HostName=127.0.0.9"]  # nobody listens there
  hosts["groups"] = {"server": "alpha", "waiter": "beta", "crash": "beta"}
  with pytest.raises(lp.HostError) as failure:
    lp.launch(remote.make_crashing_program(), launch_type="ssh", hosts=hosts)
  message = str(failure.value)
  assert "host 'beta'" in message and "ssh could not connect" in message
  assert "waiter[0], crash[0]" in message
  assert "alpha" not in message, "the reachable host is not blamed"
  assert_none_left(marker)  # the agent on alpha was closed


def test_a_host_without_launchpad_says_to_install_it(hosts, marker):
  hosts["hosts"]["alpha"]["python"] = f"{sys.executable} -S"  # no site-packages: no launchpad
  with pytest.raises(lp.HostError, match="launchpad is not installed") as failure:
    lp.launch(remote.make_crashing_program(), launch_type="ssh", hosts=hosts)
  assert "host 'alpha'" in str(failure.value) and "install it" in str(failure.value)
  assert_none_left(marker)


def test_a_lost_connection_fails_its_nodes_and_stops_the_program(hosts, marker):
  hosts["groups"] = {"echo": "alpha", "caller": "beta"}
  controller = lp.launch(remote.make_program(then_wait=True), launch_type="ssh", hosts=hosts)
  try:
    runs.Run(controller.run_dir).control_client().resolve("echo[0]", 30)
    agents = [
      p
      for p in remote_processes(marker)
      if p.environ().get("SSH_CONNECTION", "").split()[2:3] == [HOSTS["alpha"]]
      and "agent.main()" in " ".join(p.cmdline())
    ]
    assert len(agents) == 1
    agents[0].kill()  # as if the host went away
    with pytest.raises(lp.NodeFailedError, match=r"echo\[0\]") as failure:
      controller.wait(60)
  finally:
    controller.stop()
  assert "SSH connection to host alpha ended" in str(failure.value)
  assert_none_left(marker)


def test_a_node_that_fails_is_restarted_on_its_host(hosts, marker, tmp_path):
  flag = tmp_path / "crashed-once"
  program = lp.Program("remote_restart")
  with program.group("echo"):
    echo = program.add_node(lp.CourierNode(remote.Echo))
  with program.group("flaky"):
    program.add_node(
      lp.PyNode(remote.crash_once_then_exchange, str(flag), echo), restart="on-failure"
    )
  hosts["groups"] = {"echo": "alpha", "flaky": "beta"}
  controller = lp.launch(program, launch_type="ssh", hosts=hosts)
  assert controller.wait(60)
  log = (controller.run_dir / "flaky[0].log").read_text()
  assert "CRASHING" in log and "EXCHANGED" in log
  assert_none_left(marker)

"""lp.report: a node's metrics reach the launching process over the control
plane in every launcher (threads, processes, SSH hosts, Ray actors), show in
`lp status`, and land in the run directory's metrics.jsonl; and sweeps of
trials on SSH hosts and in Ray actors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import cloudpickle
import pytest

import launchpad as lp
from launchpad import live_view
from launchpad.control import control_pb2
from launchpad.control.client import ControlClient
from launchpad.control.coordinator import Coordinator
from tests import ray_cluster
from tests.launching import launching
from tests.sshd import HOSTS, LoopbackSshd
from tests.sweep.conftest import TIMEOUT

cloudpickle.register_pickle_by_value(__import__(__name__))  # SSH hosts and Ray need not import it

STEPS = 3


def reporter() -> None:
  """Reports loss and return at steps 0..STEPS-1, the last one from a thread
  of its own, which belongs to no node: the coordinator finds the node by its
  pid and host (the only running node there)."""
  for step in range(STEPS - 1):
    lp.report(step=step, loss=1.0 / (step + 1), **{"return": 10.0 * step})
  thread = threading.Thread(target=lambda: lp.report(step=STEPS - 1, loss=0.0, **{"return": 99}))
  thread.start()
  thread.join()


def program() -> lp.Program:
  made = lp.Program("reporting")
  made.add_node(lp.PyNode(reporter), label="reporter")
  return made


threads = launching(launch_type="threads")
processes = launching(launch_type="local_mp", terminal="output_to_files")


def wait_for_all(controller: lp.Controller) -> list:
  assert controller.wait(timeout=TIMEOUT)
  return controller.metrics()


def check_reports(reports: list) -> None:
  assert [r.step for r in reports] == list(range(STEPS))
  assert [r.number for r in reports] == list(range(STEPS))
  assert reports[0].values == {"loss": 1.0, "return": 0.0}
  assert reports[-1].values == {"loss": 0.0, "return": 99.0}
  assert [r.node for r in reports] == ["reporter[0]"] * STEPS


def test_threads_launcher(threads):
  controller = threads(program())
  check_reports(wait_for_all(controller))
  assert controller.metrics(since=STEPS) == []


def test_multiprocess_launcher_keeps_metrics_jsonl_and_shows_the_latest(processes):
  controller = processes(program())
  check_reports(wait_for_all(controller))
  lines = (controller.run_dir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == list(range(STEPS))
  assert json.loads(lines[0])["node"] == "reporter[0]"
  assert json.loads(lines[-1])["return"] == 99.0
  assert oct(os.stat(controller.run_dir / "metrics.jsonl").st_mode & 0o777) == "0o600"


def test_status_shows_each_nodes_latest_report(processes):
  def report_then_wait() -> None:
    lp.report(step=7, loss=0.25)
    lp.wait_for_stop(TIMEOUT)

  made = lp.Program("waiting")
  made.add_node(lp.PyNode(report_then_wait), label="worker")
  controller = processes(made)
  assert controller.metrics(timeout=TIMEOUT)
  frame = live_view.frame(controller.status(), "title")
  assert "  step 7: loss 0.25" in frame
  status = subprocess.run(
    [sys.executable, "-m", "launchpad.cli", "status"],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    check=True,
  )
  assert re.search(r"(?m)^  worker\[0\] .*\n    step 7: loss 0.25$", status.stdout), status.stdout
  controller.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
  server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
  server.start()
  yield server
  server.stop()


def test_ssh_launcher(sshd, tmp_path):
  hosts = sshd.hosts(workdir=str(tmp_path / "work"))
  hosts["groups"] = {"*": list(HOSTS)}
  controller = lp.launch(program(), launch_type="ssh", hosts=hosts)
  try:
    check_reports(wait_for_all(controller))
  finally:
    controller.stop(timeout=TIMEOUT)


def test_ray_launcher():
  pytest.importorskip("launchpad.launch.ray", reason="needs ray")
  with ray_cluster.local_ray(num_cpus=2, include_dashboard=False):  # checks: loopback only
    controller = lp.launch(program(), launch_type="ray", grace_period=2.0)
    try:
      check_reports(wait_for_all(controller))
    finally:
      controller.stop(timeout=TIMEOUT)


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"step": 1.5, "loss": 1}, TypeError, r"step must be a whole number \(an int\), got 1.5"),
    ({"step": True, "loss": 1}, TypeError, r"step must be a whole number"),
    ({"step": -1, "loss": 1}, ValueError, r"step must be 0 or more, got -1"),
    ({"step": 1}, TypeError, r"give at least one metric"),
    ({"step": 1, "loss": "low"}, TypeError, r"metric 'loss' is 'low'; metrics are numbers"),
  ],
)
def test_a_wrong_call_names_the_argument(kwargs, error, message):
  with pytest.raises(error, match=message):
    lp.report(**kwargs)


def test_outside_a_program_the_report_is_dropped_with_one_warning():
  code = "import launchpad as lp\nfor step in range(3):\n  assert lp.report(step=step, loss=0.5) is None\n"
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
  )
  assert done.stderr.count("lp.report outside a launched program: the metrics are dropped") == 1


def scored(x: float) -> lp.Program:
  """A trial program for the sweeps below: reports score = x at steps 0 and 1."""

  def report_x() -> None:
    for step in range(2):
      lp.report(step=step, score=x)

  made = lp.Program("scored")
  made.add_node(lp.PyNode(report_x), label="worker")
  return made


def check_sweep(result) -> None:
  assert sorted(t["state"] for t in result.trials) == ["complete", "complete"]
  assert result.best["params"] == {"x": 2.0} and result.best["value"] == 2.0


def test_a_sweep_of_trials_on_ssh_hosts(sshd, tmp_path):
  hosts = sshd.hosts(workdir=str(tmp_path / "work"))
  hosts["groups"] = {"*": list(HOSTS)}
  result = lp.sweep(
    scored,
    {"x": [1.0, 2.0]},
    parallel=2,
    launch_type="ssh",
    objective="score",
    name="ssh",
    launch_options={"hosts": hosts},
  )
  check_sweep(result)


def test_a_sweep_of_trials_in_ray_actors():
  pytest.importorskip("launchpad.launch.ray", reason="needs ray")
  # One cluster for every trial; it checks that it listens on loopback only.
  with ray_cluster.local_ray(num_cpus=2, include_dashboard=False):
    result = lp.sweep(
      scored,
      {"x": [1.0, 2.0]},
      parallel=2,
      launch_type="ray",
      objective="score",
      name="ray",
      launch_options={"grace_period": 2.0},
    )
  check_sweep(result)


def test_a_report_without_the_programs_token_is_refused():
  secret = os.urandom(32)
  coordinator = Coordinator("prog", ["worker[0]"], secret)
  address = coordinator.start()
  strangers, members = ControlClient(address, os.urandom(32)), ControlClient(address, secret)
  report = control_pb2.MetricsReport(node="worker[0]", step=1, values={"loss": 0.5})
  try:
    with pytest.raises(lp.LaunchpadError, match=r"refused this process's ReportMetrics call"):
      strangers.report_metrics(report)
    assert coordinator.metrics.count == 0
    members.report_metrics(report)
    assert [(m.node, m.step, m.values) for m in coordinator.metrics.since(0)] == [
      ("worker[0]", 1, {"loss": 0.5})
    ]
    with pytest.raises(KeyError, match=r"program prog has no node 'nobody\[0\]'"):
      members.report_metrics(control_pb2.MetricsReport(node="nobody[0]", step=1))
  finally:
    strangers.close()
    members.close()
    coordinator.close()

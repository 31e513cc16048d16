"""Tests of the Ray launcher (`launch_type='ray'`) on one real local Ray instance.

The module starts one small Ray instance and every program joins it, so
each test pays for actors, not for a cluster. The launcher's module keeps
Ray on loopback (it would take the host's outward address and listen on
every interface otherwise); the instance checks that it does. Nodes defined
here travel to their actors by value: actors never import this module.
Tests on a cluster of two Ray nodes are in test_ray_cluster.py.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from unittest import mock

import cloudpickle
import pytest
from absl import flags

pytest.importorskip("launchpad.launch.ray", reason="needs ray")

import ray

import launchpad as lp
from launchpad import runs
from launchpad.control.client import ControlClient
from launchpad.control.coordinator import FINISHED
from launchpad.launch import ray as ray_launcher
from tests import ray_cluster
from tests.launch.programs import absl_logs
from tests.launch.test_absl_logging import DEBUG, INFO, WARNING
from tests.launching import launching

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Bound on every wait for a program, a call or a command.
TIMEOUT = 60.0


def load_example(name: str) -> types.ModuleType:
  """examples/NAME.py, loaded once per process under the name the examples'
  own tests use, its absl flags on a FlagValues of their own (the examples
  share flag names); it travels to the actors by value."""
  module_name = f"launchpad_examples_{name}"
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    define = functools.partial(flags.DEFINE_integer, flag_values=flags.FlagValues())
    with mock.patch.object(flags, "DEFINE_integer", define):
      spec.loader.exec_module(module)
    sys.modules[module_name] = module
  cloudpickle.register_pickle_by_value(sys.modules[module_name])
  return sys.modules[module_name]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
  """One local Ray instance for the module, listening on loopback only; its
  address. It is shut down at the end: a later module may start its own."""
  with ray_cluster.local_ray(num_cpus=2, resources={"widget": 2}, include_dashboard=False) as gcs:
    yield gcs


# lp.launch in ray mode on `cluster`; every program launched is stopped at teardown.
launched = launching(needs=("cluster",), launch_type="ray", grace_period=2.0)


def records(controller) -> dict:
  """The coordinator's record of every node."""
  return controller._coordinator.nodes


def client(handle):
  return handle.dereference().with_timeout(TIMEOUT)


# Nodes.


class Service:
  """Says where it runs."""

  def __init__(self):
    print("service up", flush=True)

  def where(self) -> dict:
    context = ray.get_runtime_context()
    return {
      "actor": context.get_actor_name(),
      "resources": context.get_assigned_resources(),
      "pid": os.getpid(),
      "run_dir": os.environ.get("LAUNCHPAD_RUN_DIR"),
    }


def explode() -> None:
  raise ValueError("boom 17")


def explode_once_served(service) -> None:
  """Raises once the Service serves, so that the stop that follows finds it running."""
  service.where()
  raise ValueError("boom 17")


def vanish() -> None:
  os._exit(3)


def fail_twice_then_succeed(path: str) -> None:
  """Raises on its first run and dies on its second (counted in a file)."""
  with open(path, "a") as f:
    f.write("run\n")
  runs = len(pathlib.Path(path).read_text().splitlines())
  if runs == 1:
    raise RuntimeError("first run fails")
  if runs == 2:
    os._exit(5)


def ignore_stop() -> None:
  threading.Event().wait(TIMEOUT)


def program_with(name: str, node: lp.Node, label: str) -> tuple[lp.Program, lp.Handle]:
  """A program of a serving Service and `node`; the Service's handle."""
  program = lp.Program(name)
  service = program.add_node(lp.CourierNode(Service), label="service")
  program.add_node(node, label=label)
  return program, service


# Running.


def test_consumer_producers_example_runs_to_completion_in_actors(launched):
  example = load_example("consumer_producers")
  controller = launched(example.make_program(num_producers=2, num_steps=3))
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  nodes = records(controller)
  assert {r.state for r in nodes.values()} == {FINISHED}
  pids = {r.pid for r in nodes.values()}
  assert len(pids) == 3 and os.getpid() not in pids


def test_with_tls_nodes_reach_the_coordinator_over_tls_only(launched):
  program, service = program_with("ray_tls", lp.PyNode(ignore_stop), "idle")
  controller = launched(program, tls=True)
  assert client(service).where()["actor"] == "service[0]"
  run = runs.Run(controller.run_dir)
  assert run.control_client().status().program == "ray_tls"
  plain = ControlClient(run.info()["coordinator"], token=run.token())
  with pytest.raises(lp.ProgramStoppedError, match="cannot be reached"):
    plain.status()
  plain.close()


def test_replay_example_runs_to_completion_in_actors(launched):
  example = load_example("replay_actors_learner")
  controller = launched(example.make_program(num_actors=1, num_steps=5))
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  assert {r.state for r in records(controller).values()} == {FINISHED}


def test_each_node_is_an_actor_named_after_it_with_its_group_resources(launched, capsys):
  program = lp.Program("resources")
  heavy = program.add_node(lp.CourierNode(Service), label="heavy")
  light = program.add_node(lp.CourierNode(Service), label="light")
  resources = {"heavy": lp.RayResources(num_cpus=0.5, resources={"widget": 1})}
  controller = launched(program, local_resources=resources)

  heavy_at, light_at = client(heavy).where(), client(light).where()
  assert (heavy_at["actor"], light_at["actor"]) == ("heavy[0]", "light[0]")
  assert heavy_at["resources"] == {"CPU": 0.5, "widget": 1.0}
  assert light_at["resources"] == {"CPU": 0.1}  # the default: many nodes share a core
  assert heavy_at["pid"] != light_at["pid"]
  assert heavy_at["run_dir"] == str(controller.run_dir)
  named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
  assert {"heavy[0]", "light[0]"} <= named
  # Ray prefixes each node's lines with the node's name (the actor's repr).
  _wait_for_output(capsys, re.compile(r"\(light\[0\] pid=\d+\).* service up"))

  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
  assert not {"heavy[0]", "light[0]"} & named


def _wait_for_output(capsys, pattern: re.Pattern, stream: str = "out") -> str:
  """Waits for a line of this process's stdout (or stderr: `stream="err"`)
  that matches `pattern`: Ray prints actors' lines from a thread of its own,
  when they arrive. Returns what it read of the stream."""
  seen = ""
  deadline = time.monotonic() + TIMEOUT
  while not pattern.search(seen):
    if time.monotonic() > deadline:
      pytest.fail(f"no output line matched {pattern.pattern!r} in {TIMEOUT} s; got:\n{seen}")
    seen += getattr(capsys.readouterr(), stream)
    time.sleep(0.05)
  return seen


def test_absl_logging_of_a_node_reaches_the_launchers_output_at_info(launched, capsys):
  controller = launched(absl_logs.make_program())
  assert controller.wait(TIMEOUT) is True
  # absl writes to the actor's stderr; Ray relays each line to the launcher's
  # stderr after the actor's name (in colour). The node logs DEBUG, INFO,
  # WARNING in turn.
  actor = r"\(talker\[0\] pid=\d+[^)]*\)(\x1b\[0m)? "
  seen = _wait_for_output(capsys, re.compile(actor + WARNING.pattern), stream="err")
  assert re.search(actor + INFO.pattern, seen), seen
  assert not re.search(DEBUG.pattern, seen), seen


def test_stop_ends_nodes_gracefully_and_kills_those_that_ignore_it(launched):
  program, service = program_with("stubborn", lp.PyNode(ignore_stop), "stubborn")
  controller = launched(program, grace_period=1.0)
  assert client(service).where()["actor"] == "service[0]"
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  nodes = records(controller)
  assert nodes["service[0]"].state == FINISHED
  assert nodes["stubborn[0]"].state != FINISHED  # killed after the grace period
  named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
  assert "stubborn[0]" not in named


# Failures.


def test_a_crash_is_reported_with_its_traceback_and_stops_the_program(launched):
  program = lp.Program("crash")
  service = program.add_node(lp.CourierNode(Service), label="service")
  program.add_node(lp.PyNode(explode_once_served, service), label="crasher")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as failure:
    controller.wait(TIMEOUT)
  assert failure.value.node == "crasher[0]"
  assert "ValueError: boom 17" in failure.value.description
  assert 'raise ValueError("boom 17")' in failure.value.remote_traceback
  assert records(controller)["service[0]"].state == FINISHED


def test_an_actor_that_dies_without_reporting_is_a_failure(launched):
  controller = launched(program_with("vanish", lp.PyNode(vanish), "vanisher")[0])
  with pytest.raises(lp.NodeFailedError) as failure:
    controller.wait(TIMEOUT)
  assert failure.value.node == "vanisher[0]"
  assert "Ray actor died" in failure.value.description
  assert "vanisher[0]" in failure.value.remote_traceback  # Ray's account names the actor
  assert records(controller)["service[0]"].state == FINISHED


def test_a_node_whose_code_is_missing_where_it_runs_fails_naming_the_import(
  launched, tmp_path, monkeypatch
):
  # A module the launcher imported, gone before the node's actor imports it.
  module_path = tmp_path / "lp_ray_gone_module.py"
  module_path.write_text("def work():\n  pass\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  gone = importlib.import_module("lp_ray_gone_module")  # the node refers to it by name
  monkeypatch.setitem(sys.modules, "lp_ray_gone_module", gone)  # forgotten at teardown
  module_path.unlink()
  program = lp.Program("gone")
  program.add_node(lp.PyNode(gone.work), label="missing")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as failure:
    controller.wait(TIMEOUT)
  assert failure.value.node == "missing[0]"
  assert "could not run the node: ModuleNotFoundError" in failure.value.description
  assert "must be importable where it runs" in failure.value.description
  assert "lp_ray_gone_module" in failure.value.remote_traceback


def test_a_node_restarts_on_failure_in_a_new_actor(launched, tmp_path):
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
  assert count.read_text().splitlines() == ["run"] * 3
  assert records(controller)["flaky[0]"].restarts == 2


# Bad input.


@pytest.mark.parametrize(
  ("resources", "error", "message"),
  [
    ({"learner": lp.RayResources()}, lp.ProgramError, "its groups are: crasher, service"),
    ({"service": lp.PythonProcess()}, TypeError, "takes lp.RayResources"),
  ],
)
def test_local_resources_must_name_groups_and_be_ray_resources(resources, error, message):
  program, _ = program_with("bad_resources", lp.PyNode(explode), "crasher")
  with pytest.raises(error, match=re.escape(message)):
    lp.launch(program, launch_type="ray", local_resources=resources)


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"num_cpus": -1}, ValueError, "num_cpus must be >= 0"),
    ({"num_gpus": "1"}, TypeError, "num_gpus must be a number"),
    ({"num_cpus": True}, TypeError, "num_cpus must be a number"),
    ({"resources": {"CPU": 1}}, ValueError, "num_cpus and num_gpus"),
    ({"resources": {1: 1}}, TypeError, "named by strings"),
    ({"resources": {"widget": float("nan")}}, ValueError, "resources['widget'] must be >= 0"),
    ({"resources": ["widget"]}, TypeError, "resources must be a dict"),
    (
      {"placement_strategy": "spread"},
      ValueError,
      "placement_strategy must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",
    ),
    ({"placement_timeout": 0}, ValueError, "placement_timeout must be > 0 seconds, got 0"),
    ({"placement_timeout": "60"}, TypeError, "placement_timeout must be a number"),
    (
      {"placement_strategy": "PACK", "num_cpus": 0},
      ValueError,
      "placement_strategy='PACK' reserves each node's num_cpus, num_gpus and resources, which "
      "are all 0",
    ),
  ],
)
def test_ray_resources_reject_bad_values(kwargs, error, message):
  with pytest.raises(error, match=re.escape(message)):
    lp.RayResources(**kwargs)


# A cluster of the launcher's own.

# Starts a program on a new local cluster, fails to launch one that asks for
# a resource the cluster lacks and one whose placement group cannot be placed
# on its one Ray node (at once: no autoscaler will add one), and checks that
# the cluster ends with the first program.
_OWN_CLUSTER_SCRIPT = textwrap.dedent(
  """
  import threading
  import psutil
  import launchpad as lp
  import launchpad.launch.ray  # first: it imports Ray with Ray's loopback switch set
  import ray

  class Service:
    pass

  def program(name):
    program = lp.Program(name)
    program.add_node(lp.CourierNode(Service), label="service")
    return program

  controller = lp.launch(program("first"), launch_type="ray", grace_period=2.0)
  try:
    lp.launch(program("second"), launch_type="ray",
              local_resources={"service": lp.RayResources(resources={"widget": 1})})
  except lp.ProgramError as e:
    print("refused:", e)
  pair = lp.Program("third")
  for _ in range(2):
    pair.add_node(lp.CourierNode(Service), label="pair")
  spread = lp.RayResources(placement_strategy="STRICT_SPREAD", placement_timeout=600)
  try:
    lp.launch(pair, launch_type="ray", local_resources={"pair": spread})
  except lp.ProgramError as e:
    print("refused:", e)
  controller.stop(timeout=30)
  for thread in threading.enumerate():
    if thread.name == "first-supervisor":
      thread.join(30)
  print("initialized:", ray.is_initialized())
  _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=20)
  print("children left:", len(alive))
  """
)


def test_a_cluster_started_by_the_launcher_checks_requests_and_ends_with_the_program(tmp_path):
  env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
  env["LAUNCHPAD_HOME"] = str(tmp_path)
  result = subprocess.run(
    [sys.executable, "-c", _OWN_CLUSTER_SCRIPT],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=env,
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  refused = [line for line in lines if line.startswith("refused:")]
  assert len(refused) == 2, lines
  widget, pair = refused
  assert "group 'service' asks for 1 widget" in widget
  # Within this test's TIMEOUT, far less than the group's placement_timeout.
  strategy = "placement_strategy='STRICT_SPREAD'"
  assert f"group 'pair' (2 nodes) could not be placed with {strategy}" in pair
  assert "(Ray says INFEASIBLE): it needs 2 Ray nodes that each have" in pair
  assert "the cluster has 1 Ray node." in pair
  assert "initialized: False" in lines and "children left: 0" in lines, lines


# Launches a program on a new local cluster and prints, as JSON, every TCP
# socket that the launcher and its descendants (Ray's processes, the node's
# actor) listen on while the program runs, and Ray's loopback switch as the
# launcher's environment and the node's have it.
_LISTENING_SCRIPT = textwrap.dedent(
  """
  import json
  import os
  import launchpad as lp
  from launchpad.launch import ray as ray_launcher
  from tests import ray_cluster

  class Service:
    def switch(self):
      return os.environ.get(ray_launcher.LOOPBACK_SWITCH)

  program = lp.Program("listening")
  service = program.add_node(lp.CourierNode(Service), label="service")
  controller = lp.launch(program, launch_type="ray", grace_period=2.0)
  node_switch = service.dereference().with_timeout(30).switch()
  print("SEEN", json.dumps({
    "listening": ray_cluster.listening_sockets(os.getpid()),
    "launcher_switch": os.environ.get(ray_launcher.LOOPBACK_SWITCH),
    "node_switch": node_switch,
  }))
  controller.stop(timeout=30)
  """
)


def _without_ray_settings(tmp_path: pathlib.Path) -> dict[str, str]:
  """This process's environment without RAY_ADDRESS and Ray's loopback switch
  (the launcher sets that one itself), with a temporary LAUNCHPAD_HOME."""
  drop = ("RAY_ADDRESS", ray_launcher.LOOPBACK_SWITCH)
  env = {key: value for key, value in os.environ.items() if key not in drop}
  return {**env, "LAUNCHPAD_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}


def test_a_cluster_started_by_the_launcher_listens_on_loopback_only(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", _LISTENING_SCRIPT],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=_without_ray_settings(tmp_path),
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  # Ray's own lines (a killed actor's) may come after it.
  (line,) = [line for line in result.stdout.splitlines() if line.startswith("SEEN ")]
  seen = json.loads(line.removeprefix("SEEN "))
  listening = seen["listening"]
  # Ray's servers, the coordinator in the launcher, the node's courier server in its actor.
  names = {name for name, _, _ in listening}
  assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::NodeActor") for n in names)
  outside = [entry for entry in listening if not ray_cluster.is_loopback(entry[1])]
  assert not outside, f"listening beyond loopback: {outside}"
  # The switch was set for Ray's import only: the launcher's children (Ray's
  # processes, the node's actor, a `ray start` a node might run) do not inherit it.
  assert (seen["launcher_switch"], seen["node_switch"]) == (None, None), seen


# With Ray imported before the launcher and the switch at 1, Ray would start
# a local cluster on the machine's outward address: the launch refuses.
_OUTWARD_SCRIPT = textwrap.dedent(
  """
  import ray
  import launchpad as lp

  if ray.util.get_node_ip_address().startswith("127."):
    print("no outward address")
  else:
    program = lp.Program("outward")
    program.add_node(lp.PyNode(print), label="printer")
    try:
      lp.launch(program, launch_type="ray")
    except lp.ProgramError as e:
      print("refused:", e)
    print("initialized:", ray.is_initialized())
  """
)


def test_the_launcher_refuses_to_start_a_cluster_that_would_listen_beyond_loopback(tmp_path):
  env = {**_without_ray_settings(tmp_path), ray_launcher.LOOPBACK_SWITCH: "1"}
  result = subprocess.run(
    [sys.executable, "-c", _OUTWARD_SCRIPT],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=env,
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  if result.stdout.strip() == "no outward address":
    pytest.skip("this machine has no address but loopback: Ray stays on it anyway")
  lines = result.stdout.splitlines()
  [refused] = [line for line in lines if line.startswith("refused:")]
  assert "a local Ray cluster started now would use this machine's address" in refused
  assert "listen on every interface" in refused
  assert "Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment" in refused
  assert "initialized: False" in lines


# The command line.


def _lp_launch(cluster: str, tmp_path: pathlib.Path, *target: str) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "launchpad.cli", "launch", "--mode=ray"]
  return subprocess.run(
    [*command, f"--ray-address={cluster}", "--grace-period=2", *target],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env={**os.environ, "LAUNCHPAD_HOME": str(tmp_path)},
    cwd=ROOT,
  )


def test_lp_launch_runs_an_example_on_a_cluster_and_exits_0(cluster, tmp_path):
  result = _lp_launch(cluster, tmp_path, "examples/consumer_producers.py", "--", "--num_steps=3")
  assert result.returncode == 0, result.stderr
  step = re.compile(r"\(consumer\[0\] pid=\d+\).* Step 2: results \[0, 1\]")
  assert any(step.search(line) for line in result.stdout.splitlines()), result.stdout


def test_lp_launch_exits_1_naming_a_node_that_crashed(cluster, tmp_path):
  result = _lp_launch(cluster, tmp_path, "tests/launch/programs/lp_crash.py:make_program")
  assert result.returncode == 1, result.stderr
  assert "node crasher[0] failed: ValueError: boom 17" in result.stderr


def test_lp_launch_exits_2_when_the_cluster_address_is_unreachable(tmp_path):
  with socket.socket() as unused:  # bound, not listening: connections are refused
    unused.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{unused.getsockname()[1]}"
    result = _lp_launch(address, tmp_path, "examples/consumer_producers.py:make_program")
  assert result.returncode == 2, result.stderr
  assert f"lp launch: cannot reach the Ray cluster at {address}" in result.stderr

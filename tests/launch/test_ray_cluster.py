"""Tests of the Ray launcher on a real two-node Ray cluster it did not start.

The module starts one cluster on loopback (tests/ray_cluster.py: a head
node and a second node, each with a custom resource of its own) and joins
it; programs run on it in this process (lp.launch) and from `lp launch`
processes that join it by --ray-address=127.0.0.1:PORT, $RAY_ADDRESS or
the head's Ray Client server (ray://127.0.0.1:PORT), without Ray's
loopback switch in their environment: the launcher sets it, or Ray would
look for the cluster at this machine's outward address, where it does not
listen.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator

import cloudpickle
import pytest

pytest.importorskip("launchpad.launch.ray", reason="needs ray")

import ray

import launchpad as lp
from launchpad.launch import ray as ray_launcher
from tests import ray_cluster
from tests.child_process import Child
from tests.launch.test_ray import load_example
from tests.launching import launching

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = pathlib.Path(__file__).resolve().parents[2]
IDLERS = ROOT / "tests" / "launch" / "programs" / "lp_ray_idlers.py"
# Bound on every wait for a program, a call, a command or the cluster.
TIMEOUT = 60.0
# Lines Ray relays from an idler: `(idler[0] pid=123) ON <node id>`.
IDLER_ON = re.compile(r".*\(idler\[(\d+)\] pid=\d+[^)]*\).* ON (\w+)")


# Ray's token settings.
RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _environment() -> dict[str, str]:
  """The environment of the clusters and of `lp launch`: Ray's loopback
  switch left out (a launcher sets it itself), no RAY_ADDRESS."""
  drop = (ray_launcher.LOOPBACK_SWITCH, "RAY_ADDRESS")
  return {key: value for key, value in os.environ.items() if key not in drop}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[ray_cluster.RayCluster]:
  """The two-node cluster, joined by this process; every socket it listens
  on is on loopback. It takes this process's token settings, as the `lp
  launch` processes do: Ray turns its token on in a process that started a
  local instance (test_ray.py's), and every Ray process, drivers and actors
  included, refuses callers whose mode differs."""
  log = tmp_path_factory.mktemp("ray") / "cluster.log"
  for running in ray_cluster.start(log, _environment()):
    listening = ray_cluster.listening_sockets(running.pid)
    outside = [entry for entry in listening if not ray_cluster.is_loopback(entry[1])]
    assert listening and not outside, f"the test cluster listens beyond loopback: {outside}"
    ray.init(address=running.address)
    try:
      yield running
    finally:
      ray.shutdown()


# lp.launch in ray mode on `cluster`; every program launched is stopped at teardown.
launched = launching(needs=("cluster",), launch_type="ray", grace_period=2.0)


def client(handle):
  return handle.dereference().with_timeout(TIMEOUT)


class Where:
  """Says on which Ray node it runs."""

  def node_id(self) -> str:
    return ray.get_runtime_context().get_node_id()


def explode() -> None:
  raise ValueError("boom on the second node")


def group_of(label: str, count: int) -> tuple[lp.Program, list]:
  """A program of `count` Where nodes in group `label`; their handles."""
  program = lp.Program(f"{label}_group")
  with program.group(label):
    handles = [program.add_node(lp.CourierNode(Where)) for _ in range(count)]
  return program, handles


def placement_groups(label: str) -> list[dict]:
  """Ray's records of the placement groups made for group `label`, live or removed."""
  return [
    group
    for group in ray.util.placement_group_table().values()
    if group["name"].endswith(f"/{label}")
  ]


def named_actors() -> set[str]:
  """The names of the live named actors on the cluster, every namespace."""
  return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}


def wait_until(condition, what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"{what}: not within {TIMEOUT} s")
    time.sleep(0.1)


# Joining.


def _without_token() -> dict[str, str]:
  """_environment() without Ray's token settings."""
  return {k: v for k, v in _environment().items() if k not in RAY_AUTH_VARIABLES}


def lp_launch(
  tmp_path: pathlib.Path, *args: str, env: dict[str, str] | None = None, replace: bool = False
) -> Child:
  """`lp launch --mode=ray ARGS`, running, in _environment() plus `env` (or
  in `env` alone, with `replace`)."""
  command = [sys.executable, "-m", "launchpad.cli", "launch", "--mode=ray", "--grace-period=2"]
  env = {**({} if replace else _environment()), **(env or {})}
  env["LAUNCHPAD_HOME"] = str(tmp_path / "lphome")
  return Child([*command, *args], TIMEOUT, env=env, cwd=ROOT)


@pytest.mark.parametrize("by", ["--ray-address", "RAY_ADDRESS", "ray://"])
def test_lp_launch_runs_the_example_on_a_cluster_it_joins(cluster, tmp_path, by):
  example = ["examples/consumer_producers.py", "--", "--num_steps=3"]
  turn = contextlib.nullcontext()
  if by == "--ray-address":
    args, env = [f"--ray-address={cluster.address}", *example], None
  elif by == "RAY_ADDRESS":
    args, env = example, {"RAY_ADDRESS": cluster.address}
  else:  # through the head's Ray Client server: the launcher is no Ray node
    args, env = [f"--ray-address={cluster.client_address}", *example], None
    turn = ray_cluster.ray_client_turn()
  with turn:
    launcher = lp_launch(tmp_path, *args, env=env)
    assert launcher.finish() == 0, launcher.output()
  step = re.compile(r"\(consumer\[0\] pid=\d+[^)]*\).* Step 2: results \[0, 1\]")
  assert any(step.search(line) for line in launcher.stdout), launcher.output()


# With Ray's loopback switch at 1, Ray would join 127.0.0.1:PORT at this
# machine's outward address, where the cluster does not listen.
_REWRITTEN_SCRIPT = """
import sys
import ray
import launchpad as lp

if ray.util.get_node_ip_address().startswith("127."):
  print("no outward address")
else:
  program = lp.Program("rewritten")
  program.add_node(lp.PyNode(print), label="printer")
  try:
    lp.launch(program, launch_type="ray", ray_address=sys.argv[1])
  except lp.ProgramError as e:
    print("refused:", e)
"""


def test_joining_a_loopback_cluster_where_ray_would_leave_loopback_is_refused_at_once(
  cluster, tmp_path
):
  env = {**_environment(), "LAUNCHPAD_HOME": str(tmp_path), ray_launcher.LOOPBACK_SWITCH: "1"}
  child = Child([sys.executable, "-c", _REWRITTEN_SCRIPT, cluster.address], TIMEOUT, env=env)
  assert child.finish() == 0, child.output()
  if child.out().strip() == "no outward address":
    pytest.skip("this machine has no address but loopback: Ray stays on it anyway")
  [refused] = [line for line in child.stdout if line.startswith("refused:")]
  assert f"Ray would join {cluster.address} at " in refused
  assert "where the cluster does not listen" in refused
  assert "Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment" in refused


@pytest.fixture
def token_head(tmp_path) -> Iterator[tuple[ray_cluster.RayHead, str]]:
  """A one-node cluster from `ray start --head`, with Ray's token
  authentication on; it and its token."""
  token = secrets.token_hex(16)
  env = {**_without_token(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
  for head in ray_cluster.start_head(tmp_path / "head.log", env):
    yield head, token


def test_joining_a_cluster_with_ray_token_authentication_takes_its_mode_and_token(
  token_head, tmp_path
):
  head, token = token_head
  address = head.address
  # `ray start --head --node-ip-address=127.0.0.1` with Ray's switch at 0: loopback only.
  listening = ray_cluster.listening_sockets(head.pid)
  assert {"gcs_server", "raylet"} <= {name for name, _, _ in listening}
  assert all(ray_cluster.is_loopback(ip) for _, ip, _ in listening), listening
  example = [f"--ray-address={address}", "examples/consumer_producers.py", "--", "--num_steps=3"]
  # Ray gives up after this many seconds of GCS refusals; the head is up and refuses at once.
  refused = {**_without_token(), "RAY_gcs_server_port_wait_time_s": "2"}
  without = lp_launch(tmp_path / "without", *example, env=refused, replace=True)
  assert without.finish() == 2, without.output()
  assert f"lp launch: cannot join the Ray cluster at {address}" in without.err()
  assert "set RAY_AUTH_MODE=token here, with its token in RAY_AUTH_TOKEN" in without.err()

  token_env = {**_without_token(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
  with_token = lp_launch(tmp_path / "with", *example, env=token_env, replace=True)
  assert with_token.finish() == 0, with_token.output()
  assert "Step 2: results [0, 1]" in with_token.out(), with_token.output()


@pytest.mark.parametrize(
  ("name", "arguments"),
  [
    ("consumer_producers", {"num_producers": 2, "num_steps": 3}),
    ("replay_actors_learner", {"num_actors": 2, "num_steps": 5}),
  ],
)
def test_the_example_runs_in_actors_on_the_cluster(launched, name, arguments):
  controller = launched(load_example(name).make_program(**arguments))
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


# Where nodes go.


def test_a_group_lands_on_the_ray_node_its_resources_name(launched, cluster):
  program = lp.Program("landing")
  with program.group("near"):
    near = program.add_node(lp.CourierNode(Where))
  with program.group("far"):
    far = program.add_node(lp.CourierNode(Where))
  resources = {
    "near": lp.RayResources(resources={"head_node": 1}),
    "far": lp.RayResources(resources={"second_node": 1}),
  }
  launched(program, local_resources=resources)
  assert client(near).node_id() == cluster.head_id
  assert client(far).node_id() == cluster.second_id


@pytest.mark.parametrize(
  ("strategy", "expected"),
  [("STRICT_SPREAD", "one node on each Ray node"), ("STRICT_PACK", "every node on one Ray node")],
)
def test_a_group_with_a_strict_placement_strategy_is_placed_by_it(
  launched, cluster, strategy, expected
):
  label = strategy.lower()
  program, handles = group_of(label, 2)
  resources = lp.RayResources(placement_strategy=strategy)
  controller = launched(program, local_resources={label: resources})
  where = [client(handle).node_id() for handle in handles]
  if expected == "one node on each Ray node":
    assert sorted(where) == sorted([cluster.head_id, cluster.second_id])
  else:
    assert where[0] == where[1]
  [group] = placement_groups(label)
  assert (group["strategy"], group["state"]) == (strategy, "CREATED")
  assert group["bundles"] == {0: {"CPU": 0.1}, 1: {"CPU": 0.1}}
  assert sorted(group["bundles_to_node_id"].values()) == sorted(where)

  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  # The launcher removes it as the program ends, just after stop() returns.
  wait_until(lambda: placement_groups(label)[0]["state"] == "REMOVED", "the group is removed")


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD"])
def test_a_group_with_a_best_effort_placement_strategy_runs_in_its_bundles(
  launched, cluster, strategy
):
  label = strategy.lower()
  resources = lp.RayResources(resources={"second_node": 1}, placement_strategy=strategy)
  program, handles = group_of(label, 2)
  launched(program, local_resources={label: resources})
  # Only the second node has second_node: both bundles, and both nodes, are there.
  assert [client(handle).node_id() for handle in handles] == [cluster.second_id] * 2
  [group] = placement_groups(label)
  assert (group["strategy"], group["state"]) == (strategy, "CREATED")
  assert set(group["bundles_to_node_id"].values()) == {cluster.second_id}


def test_a_group_with_the_spread_strategy_spreads_over_both_ray_nodes(launched, cluster):
  # Both Ray nodes have room for both bundles: best effort spreads them.
  program, handles = group_of("wide", 2)
  launched(program, local_resources={"wide": lp.RayResources(placement_strategy="SPREAD")})
  where = [client(handle).node_id() for handle in handles]
  assert sorted(where) == sorted([cluster.head_id, cluster.second_id])
  [group] = placement_groups("wide")
  assert (group["strategy"], group["state"]) == ("SPREAD", "CREATED")
  assert sorted(group["bundles_to_node_id"].values()) == sorted(where)


def test_a_group_that_cannot_be_placed_fails_the_launch_naming_it_and_its_strategy(cluster):
  resources = lp.RayResources(placement_strategy="STRICT_SPREAD", placement_timeout=2.0)
  program, _ = group_of("crowd", 3)
  start = time.monotonic()
  with pytest.raises(lp.ProgramError) as failure:
    lp.launch(program, launch_type="ray", local_resources={"crowd": resources})
  assert time.monotonic() - start < TIMEOUT
  message = str(failure.value)
  assert "group 'crowd' (3 nodes) could not be placed with placement_strategy='STRICT_SPREAD'" in (
    message
  )
  assert "it needs 3 Ray nodes that each have {'CPU': 0.1} free" in message
  assert "the cluster has 2 Ray nodes." in message
  assert "placement_timeout" in message
  assert [group["state"] for group in placement_groups("crowd")] == ["REMOVED"]
  assert not {"crowd[0]", "crowd[1]", "crowd[2]"} & named_actors()


# Failures and ends.


def test_a_crash_on_the_second_node_is_reported_with_its_traceback(launched):
  program = lp.Program("far_crash")
  program.add_node(lp.PyNode(explode), label="crasher")
  resources = {"crasher": lp.RayResources(resources={"second_node": 1})}
  controller = launched(program, local_resources=resources)
  with pytest.raises(lp.NodeFailedError) as failure:
    controller.wait(TIMEOUT)
  assert failure.value.node == "crasher[0]"
  assert "ValueError: boom on the second node" in failure.value.description
  assert 'raise ValueError("boom on the second node")' in failure.value.remote_traceback


def run_of(tmp_path: pathlib.Path) -> str:
  """The name of the one run `lp launch` made under tmp_path."""
  [run] = list((tmp_path / "lphome" / "runs").iterdir())
  return run.name


def start_idlers(cluster, tmp_path: pathlib.Path, *flags: str) -> tuple[Child, dict[int, str]]:
  """`lp launch` of two idlers on the cluster; the launcher and, once both
  run, the Ray node id of each."""
  address = f"--ray-address={cluster.address}"
  launcher = lp_launch(tmp_path, address, str(IDLERS), "--", "--num_idlers=2", *flags)
  on = {int(m.group(1)): m.group(2) for m in launcher.wait_for(IDLER_ON, count=2)}
  assert set(on) == {0, 1}, launcher.output()
  return launcher, on


def test_lp_stop_ends_the_program_and_leaves_the_cluster_running(cluster, tmp_path):
  launcher, _ = start_idlers(cluster, tmp_path)
  assert {"idler[0]", "idler[1]"} <= named_actors()
  stop = Child(
    [sys.executable, "-m", "launchpad.cli", "stop", run_of(tmp_path)],
    TIMEOUT,
    env={**_environment(), "LAUNCHPAD_HOME": str(tmp_path / "lphome")},
  )
  assert stop.finish() == 0, stop.output()
  assert launcher.finish() == 0, launcher.output()
  wait_until(lambda: not {"idler[0]", "idler[1]"} & named_actors(), "the idlers' actors end")
  alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
  assert alive == {cluster.head_id, cluster.second_id}


def test_sigkill_of_the_launcher_leaves_nothing_of_its_program_and_frees_its_resources(
  cluster, tmp_path, launched
):
  # The killed program holds all of the second node's second_node, in a placement group.
  flags = ("--resource=second_node", "--amount=2", "--strategy=STRICT_PACK")
  launcher, on = start_idlers(cluster, tmp_path, *flags)
  assert set(on.values()) == {cluster.second_id}
  [group] = placement_groups("idler")
  assert group["state"] == "CREATED"
  os.kill(launcher.pid, signal.SIGKILL)
  assert launcher.finish() == -signal.SIGKILL

  wait_until(lambda: not {"idler[0]", "idler[1]"} & named_actors(), "the idlers' actors end")
  wait_until(lambda: placement_groups("idler")[0]["state"] == "REMOVED", "the group is removed")
  # A second program gets all of second_node again.
  resources = lp.RayResources(resources={"second_node": 2}, placement_strategy="STRICT_PACK")
  program, handles = group_of("again", 2)
  launched(program, local_resources={"again": resources})
  assert [client(handle).node_id() for handle in handles] == [cluster.second_id] * 2

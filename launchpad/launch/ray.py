"""The Ray launcher (`launch_type='ray'`): every node is a Ray actor.

Each worker of the plan becomes one actor, named after its node
(`label[index]`) so that Ray's output prefixes and `ray list actors` name
it, with the resources its group asks for (`lp.RayResources`). Ray only
places, runs and kills the actors: the program's coordinator runs in the
launcher as in every other mode, actors register their courier addresses
with it, report how their node ended, and learn of the stop from it.

On a cluster of this host (one the launcher starts, or one whose nodes have
a loopback address) the coordinator and the nodes bind loopback, and so do
Ray's own servers in a cluster the launcher starts. On a remote cluster the
coordinator binds every interface and advertises the launcher's IP, and
each node binds the IP of the Ray node it runs on.

A group whose lp.RayResources name a placement strategy gets a Ray
placement group, one bundle per node, placed before its actors start and
removed when the program ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import cloudpickle
import psutil

from launchpad import errors, runs
from launchpad import resources as resources_lib
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator
from launchpad.courier import serialization
from launchpad.launch import process_main
from launchpad.launch.plan import Plan
from launchpad.launch.ray_options import RayOptions
from launchpad.launch.session import Session
from launchpad.resources import RayResources
from launchpad.tls import TlsConfig

# Ray merges look-alike lines of different actors (the producers' lines) by
# default; launchpad shows every node's lines, as in the other modes. Read
# when Ray is imported: a user's own setting, or an earlier import, wins.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray (2.60) gives a new local cluster this machine's outward IP, on which its
# servers listen on every interface, and rewrites a loopback address to join
# (127.0.0.1:PORT) to that IP. With this variable at 0, meant for macOS and
# Windows, it uses 127.0.0.1 for both, and its servers listen on loopback
# only.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _set_unless_set(name: str, value: str) -> Iterator[None]:
  """os.environ[name] = value for the block, unless the user set it.

  Ray reads LOOPBACK_SWITCH once, as it is imported (ray._private.ray_constants),
  so the import is all that needs it; children of this process (a node that
  runs `ray start --address=...` on a cluster of many hosts, which the switch
  at 0 refuses) get the environment the user gave."""
  if name in os.environ:
    yield
    return
  os.environ[name] = value
  try:
    yield
  finally:
    os.environ.pop(name, None)


with _set_unless_set(LOOPBACK_SWITCH, "0"):
  try:
    import ray
    from ray.util.placement_group import (
      placement_group,
      placement_group_table,
      remove_placement_group,
    )
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
  except ImportError as e:
    raise ImportError(
      "launch_type='ray' needs Ray: install it with pip install 'launchpad-rl[ray]'."
    ) from e

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ANY_INTERFACE = "0.0.0.0"
# Ray streams actors' output to the launcher asynchronously (~0.1 s late) and
# says nothing when it has all arrived: the launcher's process stays this
# long after the program so that the nodes' last lines reach its terminal.
OUTPUT_LINGER_SECONDS = 1.0
# Bound on the check that the cluster's address accepts connections.
CONNECT_TIMEOUT_SECONDS = 10.0
# Bound on killing what a node left behind when it has ended.
DESCENDANTS_END_SECONDS = 10.0
# How often a launch looks again at a placement group Ray has not placed yet.
PLACEMENT_POLL_SECONDS = 0.2
# The host names Ray replaces by this machine's IP in an address to join.
RAY_LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1")


class RayLauncher:
  """One Ray actor per node."""

  options = RayOptions
  single_host = False
  nodes_travel = True

  def prepare(self, session: Session, options: RayOptions) -> _Actors:
    plan = session.plan
    resources = _group_resources(plan, options.local_resources or {})
    tls = TlsConfig.for_launch(options.tls)
    cluster = _session.join(
      options.ray_address, sum(_resource(resources, w.label).num_cpus for w in plan.workers)
    )
    session.on_close("the Ray cluster", _session.leave)
    if cluster.started:
      _check_fits(resources, ray.cluster_resources())
    run = session.create_run()
    # Ray streams actors' output to this process a little late, and says
    # nothing when all of it has arrived.
    session.on_close("the nodes' last output", lambda: time.sleep(OUTPUT_LINGER_SECONDS))
    port = session.start_coordinator(LOOPBACK if cluster.local else ANY_INTERFACE, tls)
    address = f"{cluster.launcher_ip}:{port.rpartition(':')[2]}"
    actors = _Actors(plan, resources, session.coordinator, address, cluster, run, tls)
    session.on_close("the Ray actors", actors.close)
    session.start_runtime(address, tls)
    return actors


LAUNCHER = RayLauncher()


def _group_resources(plan: Plan, local_resources: dict[str, Any]) -> dict[str, RayResources]:
  groups = {worker.label for worker in plan.workers}
  return resources_lib.by_group(plan.program, groups, local_resources, RayResources, "ray")


def _resource(resources: dict[str, RayResources], group: str) -> RayResources:
  return resources.get(group) or RayResources()


def _check_fits(resources: dict[str, RayResources], cluster: dict[str, float]) -> None:
  """Fails now, naming the group, when a node asks a local cluster for more
  than it has: Ray would leave its actor pending forever."""
  for group, resource in resources.items():
    wanted = {"GPU": resource.num_gpus, **resource.resources}
    for name, amount in wanted.items():
      if amount > cluster.get(name, 0.0):
        raise errors.ProgramError(
          f"group {group!r} asks for {amount:g} {name} per node, and the local Ray cluster "
          f"started for this program has {cluster.get(name, 0.0):g}; launch on a cluster "
          "that has it (ray_address=..., lp launch --ray-address) or lower the group's "
          "lp.RayResources."
        )


@dataclasses.dataclass(frozen=True)
class _Cluster:
  """The Ray cluster this process is connected to."""

  started: bool  # a launch started it, on this host
  local: bool  # every node of it runs on this host: loopback reaches them all
  launcher_ip: str  # this machine's IP as the cluster's nodes reach it


class _Session:
  """This process's connection to Ray, shared by the programs it launches.

  A connection that a launch opened (ray.init) is closed when the last
  program using it ends, which also ends a local cluster that the launch
  started; a connection the user opened is left alone.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._users = 0
    self._opened = False
    self._cluster = _Cluster(started=False, local=False, launcher_ip=LOOPBACK)

  def join(self, address: str | None, num_cpus: float) -> _Cluster:
    with self._lock:
      if self._users == 0:
        self._cluster, self._opened = _connect(address, num_cpus)
      self._users += 1
      return self._cluster

  def leave(self) -> None:
    with self._lock:
      self._users -= 1
      if self._users == 0 and self._opened:
        ray.shutdown()


# Ray's option (off by default in 2.60) under which each worker is a subreaper
# that kills what it started, orphans of its descendants included, when it
# exits, and the raylet kills the descendants of a worker that died: a node's
# daemons end with its actor, a killed actor's too, and so do those of a
# cluster whose launcher was SIGKILLed. On in the clusters the launcher
# starts, unless the user set RAY_<name>; a cluster it joins has its own.
CHILD_CLEANUP = "kill_child_processes_on_worker_exit_with_raylet_subreaper"


def _connect(address: str | None, num_cpus: float) -> tuple[_Cluster, bool]:
  """Joins or starts a cluster; True if this call opened the connection."""
  if ray.is_initialized():
    if address:
      log.warning("this process has joined a Ray cluster already (ray.init); %r is unused", address)
    return _joined(), False
  address = address or os.environ.get("RAY_ADDRESS")
  if address:
    _check_reachable(address)
    _join(address)
    return _joined(), True
  _check_stays_on_loopback()
  # Enough CPUs for every node's request, a tenth of a core each by default.
  cleanup = None if f"RAY_{CHILD_CLEANUP}" in os.environ else {CHILD_CLEANUP: True}
  ray.init(
    address="local",
    num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)),
    _system_config=cleanup,
  )
  return _Cluster(started=True, local=True, launcher_ip=LOOPBACK), True


def _join(address: str) -> None:
  """ray.init(address), or an error that says what to check."""
  try:
    ray.init(address=address)
  except ConnectionError as e:
    raise errors.ProgramError(
      f"cannot join the Ray cluster at {address}: {e}. If the cluster uses Ray's token "
      "authentication, set RAY_AUTH_MODE=token here, with its token in RAY_AUTH_TOKEN, the "
      "file RAY_AUTH_TOKEN_PATH names or ~/.ray/auth_token: Ray does not turn it on by itself "
      "for an address it is given."
    ) from e


def _joined() -> _Cluster:
  """The cluster this process has just joined (as a driver or a Ray Client)."""
  nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
  if all(_is_loopback(ip) for ip in nodes):
    return _Cluster(started=False, local=True, launcher_ip=LOOPBACK)
  if ray.util.client.ray.is_connected():
    # This process is no Ray node: the cluster reaches it where it sends from.
    return _Cluster(started=False, local=False, launcher_ip=_source_ip(nodes[0]))
  return _Cluster(started=False, local=False, launcher_ip=ray.util.get_node_ip_address())


def _source_ip(towards: str) -> str:
  """The IP this machine sends from to `towards` (a UDP connect sends nothing)."""
  family = socket.AF_INET6 if ":" in towards else socket.AF_INET
  with socket.socket(family, socket.SOCK_DGRAM) as probe:
    probe.connect((towards, 9))
    return probe.getsockname()[0]


def _check_stays_on_loopback() -> None:
  """Fails before starting a local cluster that would listen on every
  interface: Ray was imported before this module set LOOPBACK_SWITCH, or the
  user set it to 1. (Before ray.init, get_node_ip_address is the IP Ray
  gives a new local cluster.)"""
  ip = ray.util.get_node_ip_address()
  if not _is_loopback(ip):
    raise errors.ProgramError(
      f"a local Ray cluster started now would use this machine's address {ip} and listen on "
      f"every interface, because Ray was imported before launchpad's Ray launcher set "
      f"{LOOPBACK_SWITCH}=0 (or it is set to 1). Set {LOOPBACK_SWITCH}=0 in the environment "
      "to keep it on loopback; or, for a local cluster other machines reach, start it "
      "yourself (ray.init() before lp.launch, or `ray start --head` and ray_address=...)."
    )


def _check_reachable(address: str) -> None:
  """Fails at once where ray.init would retry for minutes: a HOST:PORT or
  ray://HOST:PORT address must accept connections, and so must the address
  Ray turns a loopback HOST:PORT into."""
  client = address.startswith("ray://")
  host, _, port = address.removeprefix("ray://").rpartition(":")
  if not (host and port.isdigit()):
    return  # 'auto', or a form Ray resolves and reports on itself
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
  except OSError as e:
    raise errors.ProgramError(
      f"cannot reach the Ray cluster at {address} ({e}); check that it runs (`ray status` on "
      "its head node) and the address: HEAD_IP:6379 for a process on a cluster node, "
      "ray://HEAD:10001 through the Ray Client server."
    ) from e
  ip = ray.util.get_node_ip_address()  # what Ray puts in place of a loopback host
  if client or host.strip("[]") not in RAY_LOCALHOST_NAMES or _is_loopback(ip):
    return
  try:
    socket.create_connection((ip, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
  except OSError as e:
    raise errors.ProgramError(
      f"Ray would join {address} at {ip}:{port} instead, where the cluster does not listen "
      f"({e}): Ray was imported before launchpad's Ray launcher set {LOOPBACK_SWITCH}=0 (or "
      f"it is set to 1). Set {LOOPBACK_SWITCH}=0 in the environment to join a cluster that "
      "listens on loopback only."
    ) from e


def _is_loopback(ip: str) -> bool:
  try:
    address = ipaddress.ip_address(ip)
  except ValueError:
    return False
  mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
  return address.is_loopback or (mapped is not None and mapped.is_loopback)


_session = _Session()


class NodeActor:
  """The Ray actor of one node: runs it, then ends, taking along whatever
  threads the node left behind."""

  def __init__(self, name: str):
    self._name = name

  def __repr__(self) -> str:
    return self._name  # Ray prefixes the actor's output with it

  def run(self, payload: bytes, import_paths: list[str], bind_node_ip: bool) -> None:
    """Runs the node of `payload`, a WorkerSpec pickled by the launcher.

    The launcher pickles it with launchpad's cloudpickle, not Ray's copy, so
    that modules registered for pickling by value (`lp launch` targets)
    travel by value.

    Args:
      import_paths: on a cluster of the launcher's host, its sys.path: the
        node imports what the launcher imported.
      bind_node_ip: on a remote cluster: the node's servers bind the IP of
        this Ray node, which the other nodes reach.
    """
    sys.path[:0] = [path for path in import_paths if path not in sys.path]
    spec: process_main.WorkerSpec = cloudpickle.loads(payload)
    if bind_node_ip:
      os.environ[process_main.HOST_VARIABLE] = ray.util.get_node_ip_address()
    # Under CHILD_CLEANUP this worker is a subreaper: the node's orphans,
    # daemons included, are its children. Ray kills them from the raylet
    # every 10 s, which a program that ends sooner has shut down by then.
    try:
      spec.run()
    finally:
      _end_descendants(DESCENDANTS_END_SECONDS)
    ray.actor.exit_actor()


def _end_descendants(timeout: float) -> None:
  """SIGKILL to every descendant of this process, over again for the orphans
  re-parented here meanwhile, until none is left or `timeout` has passed.
  Ray's worker may reap them too: psutil waits either way."""
  deadline = time.monotonic() + timeout
  while (left := psutil.Process().children(recursive=True)) and time.monotonic() < deadline:
    for process in left:
      with contextlib.suppress(psutil.Error):
        process.kill()
    psutil.wait_procs(left, timeout=max(0.0, min(1.0, deadline - time.monotonic())))


_RemoteNodeActor = ray.remote(NodeActor)


@dataclasses.dataclass
class _Actor:
  """One start of a node (a restart makes a new actor)."""

  name: str
  handle: Any
  restarts: int  # the node's restarts when it started; ends of older actors are old news
  ended: bool = False
  killed: bool = False


class _Actors:
  """The actors of one program; reports those that end unannounced."""

  def __init__(
    self,
    plan: Plan,
    resources: dict[str, RayResources],
    coordinator: Coordinator,
    address: str,
    cluster: _Cluster,
    run: runs.Run,
    tls: TlsConfig | None,
  ):
    self._plan = plan
    self._tls = tls
    self._resources = resources
    self._coordinator = coordinator
    self._address = address
    self._cluster = cluster
    self._local = cluster.local
    self._env = {process_main.RUN_DIR_VARIABLE: str(run.path)} if cluster.local else {}
    # Actor names are node names: unique within a namespace of this launch.
    self._namespace = f"{run.name}-{uuid.uuid4().hex[:8]}"
    self._nodes = {node.name: node for node in plan.workers}
    self._actors: dict[str, _Actor] = {}
    self._changed = threading.Condition()
    self._placement = _Placement(self._namespace)

  def start_all(self) -> None:
    """Places the groups that ask for placement groups, then starts every node."""
    self._placement.place(
      self._plan, self._resources, wait_for_autoscaler=not self._cluster.started
    )
    for name in self._nodes:
      self.start(name)

  def start(self, name: str) -> None:
    """Starts node `name` in a new actor (again, after a failure)."""
    node = self._nodes[name]
    resource = _resource(self._resources, node.label)
    with self._changed:
      previous = self._actors.get(name)
      if previous is not None:
        previous.killed = True
    if previous is not None:
      ray.kill(previous.handle)  # it outlives its node when the node could not start
    try:
      handle = _RemoteNodeActor.options(
        name=name,
        namespace=self._namespace,
        num_cpus=resource.num_cpus,
        num_gpus=resource.num_gpus,
        resources=dict(resource.resources),
        max_restarts=0,
        scheduling_strategy=self._placement.strategy(name),
      ).remote(name)
    except (ValueError, TypeError) as e:
      raise errors.ProgramError(
        f"Ray refused the actor of node {name}: {e}; check the lp.RayResources of group "
        f"{node.label!r}."
      ) from e
    actor = _Actor(name, handle, self._coordinator.nodes[name].restarts)
    with self._changed:
      self._actors[name] = actor
    spec = process_main.WorkerSpec(
      self._plan.program, self._address, self._plan.secret, node, dict(self._env), self._tls
    )
    ended = handle.run.remote(
      serialization.cloudpickle_dumps(spec), sys.path if self._local else [], not self._local
    )
    ended.future().add_done_callback(functools.partial(self._ended, actor))

  def _ended(self, actor: _Actor, ended: futures.Future) -> None:
    """Ray calls this when the actor's run is over; reports a node that did
    not say how it ended. Runs in a thread of Ray's: no Ray calls here."""
    with self._changed:
      actor.ended = True
      self._changed.notify_all()
    record = self._coordinator.nodes[actor.name]
    if actor.killed or record.restarts != actor.restarts or record.state in (FINISHED, FAILED):
      return
    description, details = _death(ended.exception(timeout=0))
    self._coordinator.report(
      control_pb2.NodeEvent(
        node=actor.name,
        kind=control_pb2.NodeEvent.FAILED,
        pid=record.pid,
        host=record.host,
        description=description,
        traceback=details,
      ),
      actor.restarts,
    )

  def join(self, timeout: float) -> bool:
    with self._changed:
      return self._changed.wait_for(lambda: all(a.ended for a in self._actors.values()), timeout)

  def kill(self, names: list[str]) -> None:
    with self._changed:
      actors = [self._actors[name] for name in names if name in self._actors]
      for actor in actors:
        actor.killed = True
    for actor in actors:
      ray.kill(actor.handle)

  def close(self) -> None:
    """Ends every actor still there (one whose node could not start outlives
    its run), and removes the program's placement groups."""
    self.kill(list(self._nodes))
    self._placement.remove()


class _Placement:
  """The placement groups of one program: one per group that asks for one
  (lp.RayResources(placement_strategy=...)), a bundle per node of the group."""

  def __init__(self, namespace: str):
    self._namespace = namespace
    self._groups: dict[str, Any] = {}  # label -> its placement group
    self._bundles: dict[str, tuple[Any, int]] = {}  # node name -> (placement group, bundle)

  def place(
    self, plan: Plan, resources: dict[str, RayResources], wait_for_autoscaler: bool
  ) -> None:
    """Creates the placement groups and returns once Ray has placed them all.

    Raises:
      errors.ProgramError: naming the first group Ray has not placed within
        its placement_timeout (or at once, when Ray finds it cannot be
        placed and no autoscaler may add nodes: `wait_for_autoscaler` False).
    """
    started = time.monotonic()
    for label, resource in resources.items():
      if resource.placement_strategy is None:
        continue
      names = [worker.name for worker in plan.workers if worker.label == label]
      group = placement_group(
        [resource.bundle()] * len(names),
        strategy=resource.placement_strategy,
        name=f"{self._namespace}/{label}",
      )
      self._groups[label] = group
      self._bundles.update({name: (group, index) for index, name in enumerate(names)})
    for label, group in self._groups.items():
      _wait_placed(label, group, resources[label], started, wait_for_autoscaler)

  def strategy(self, name: str) -> PlacementGroupSchedulingStrategy | None:
    """Where node `name`'s actor goes: its bundle, if its group has a placement group."""
    if name not in self._bundles:
      return None
    group, index = self._bundles[name]
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)

  def remove(self) -> None:
    for group in self._groups.values():
      remove_placement_group(group)
    self._groups.clear()
    self._bundles.clear()


def _wait_placed(
  label: str, group: Any, resource: RayResources, started: float, wait_for_autoscaler: bool
) -> None:
  deadline = started + resource.placement_timeout
  while not group.wait(max(0.0, min(PLACEMENT_POLL_SECONDS, deadline - time.monotonic()))):
    state = placement_group_table(group)["stats"]["scheduling_state"]
    if time.monotonic() >= deadline or (state == "INFEASIBLE" and not wait_for_autoscaler):
      raise errors.ProgramError(_unplaced(label, group, resource, state, started))


def _unplaced(label: str, group: Any, resource: RayResources, state: str, started: float) -> str:
  count, bundle = len(group.bundle_specs), resource.bundle()
  strategy = resource.placement_strategy
  if strategy == "STRICT_SPREAD":
    need = f"{count} Ray nodes that each have {bundle} free"
  elif strategy == "STRICT_PACK":
    need = f"one Ray node that has {count} x {bundle} free"
  else:
    need = f"{count} x {bundle} free on the cluster's nodes"
  alive = sum(1 for node in ray.nodes() if node["Alive"])
  return (
    f"group {label!r} ({count} nodes) could not be placed with placement_strategy="
    f"{strategy!r} in {time.monotonic() - started:.0f} s (Ray says {state}): it needs {need}, "
    f"and the cluster has {alive} Ray node{'' if alive == 1 else 's'}. Add Ray nodes that have "
    "the resources, choose another placement_strategy, or give the group more time "
    "(lp.RayResources(placement_timeout=...))."
  )


_IMPORT_HINT = (
  "; the node's code must be importable where Ray runs it: install it in the cluster's "
  "image, or ship it with a runtime_env working_dir (docs/remote_ray.md)"
)


def _death(error: BaseException | None) -> tuple[str, str]:
  """(description, details) of an actor's end that its node did not report."""
  if isinstance(error, ray.exceptions.RayActorError):
    return "its Ray actor died before the node reported how it ended", str(error)
  cause = getattr(error, "cause", None) or error
  hint = _IMPORT_HINT if isinstance(cause, ImportError) else ""
  return f"its Ray actor could not run the node: {type(cause).__name__}: {cause}{hint}", str(error)

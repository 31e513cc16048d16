"""The Ray launcher (`launch_type='ray'`): every node is a Ray actor.

Each worker of the plan becomes one actor, named after its node
(`label[index]`) so that Ray's output prefixes and `ray list actors` name
it, with the resources its group asks for (`lp.RayResources`). Ray only
places, runs and kills the actors: the program's coordinator runs in the
launcher as in every other mode, actors register their courier addresses
with it, report how their node ended, and learn of the stop from it.

On a cluster of this host (one the launcher starts, or one whose nodes have
a loopback address) the coordinator and the nodes bind loopback. On a
remote cluster the coordinator binds every interface and advertises the
launcher's IP, and each node binds the IP of the Ray node it runs on.
"""

from __future__ import annotations

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
from concurrent import futures
from typing import Any

import cloudpickle

from launchpad import errors, runs
from launchpad import resources as resources_lib
from launchpad.context import ProgramRuntime
from launchpad.control import control_pb2
from launchpad.control.coordinator import FAILED, FINISHED, Coordinator
from launchpad.courier import serialization
from launchpad.launch import process_main
from launchpad.launch.controller import Controller
from launchpad.launch.plan import Plan
from launchpad.resources import RayResources
from launchpad.tls import TlsConfig

# Ray merges look-alike lines of different actors (the producers' lines) by
# default; launchpad shows every node's lines, as in the other modes. Read
# when Ray is imported: a user's own setting, or an earlier import, wins.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
try:
  import ray
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


def launch(
  plan: Plan,
  grace_period: float = 10.0,
  local_resources: dict[str, Any] | None = None,
  *,
  address: str | None = None,
  tls: bool | TlsConfig = False,
  handle_signals: bool = True,
) -> Controller:
  """Starts one Ray actor per node of `plan` and returns once all are created.

  Args:
    address: the Ray cluster to join ('auto', 'ray://head:10001', 'host:6379').
      Default: the cluster this process joined already (ray.init), else the
      one $RAY_ADDRESS names, else a new local cluster that ends with the
      program.
    tls: encrypt traffic between nodes and with the coordinator: True makes a
      certificate for this launch; or give lp.TlsConfig.from_files(...).
    handle_signals: Ctrl-C and SIGTERM stop the program gracefully (main
      thread only); a failure after the main thread returned exits with 1.
  """
  resources = _group_resources(plan, local_resources or {})
  tls = TlsConfig.for_launch(tls)
  cluster = _session.join(
    address, sum(_resource(resources, w.label).num_cpus for w in plan.workers)
  )
  try:
    if cluster.started:
      _check_fits(resources, ray.cluster_resources())
    return _launch(plan, grace_period, resources, cluster, tls, handle_signals)
  except BaseException:
    _session.leave()
    raise


def _launch(
  plan: Plan,
  grace_period: float,
  resources: dict[str, RayResources],
  cluster: _Cluster,
  tls: TlsConfig | None,
  handle_signals: bool,
) -> Controller:
  coordinator = Coordinator(
    plan.program,
    plan.node_names,
    plan.secret,
    host=LOOPBACK if cluster.local else ANY_INTERFACE,
    tls=tls,
  )
  port = coordinator.start().rpartition(":")[2]
  address = f"{LOOPBACK if cluster.local else ray.util.get_node_ip_address()}:{port}"
  run = runs.create(plan.program)
  run.write(address, plan.secret, tls)
  actors = _Actors(plan, resources, coordinator, address, cluster.local, run, tls)
  runtime = ProgramRuntime(plan.program, address, plan.secret, source=plan.source, tls=tls)
  controller = Controller(plan, coordinator, runtime, actors, grace_period, run_dir=run.path)
  try:
    actors.start_all()
  except BaseException:
    actors.close()
    runtime.close()
    coordinator.close()
    run.finish()
    raise
  controller.start_supervisor(handle_signals, functools.partial(_end, actors, run))
  return controller


def _end(actors: _Actors, run: runs.Run) -> None:
  actors.close()
  run.finish()
  time.sleep(OUTPUT_LINGER_SECONDS)
  _session.leave()


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
    self._cluster = _Cluster(started=False, local=False)

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


def _connect(address: str | None, num_cpus: float) -> tuple[_Cluster, bool]:
  """Joins or starts a cluster; True if this call opened the connection."""
  if ray.is_initialized():
    if address:
      log.warning("this process has joined a Ray cluster already (ray.init); %r is unused", address)
    return _Cluster(started=False, local=_is_loopback(ray.util.get_node_ip_address())), False
  address = address or os.environ.get("RAY_ADDRESS")
  if address:
    _check_reachable(address)
    ray.init(address=address)
    return _Cluster(started=False, local=_is_loopback(ray.util.get_node_ip_address())), True
  # Enough CPUs for every node's request, a tenth of a core each by default.
  ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)))
  return _Cluster(started=True, local=True), True


def _check_reachable(address: str) -> None:
  """Fails at once where ray.init would retry for minutes: a HOST:PORT or
  ray://HOST:PORT address must accept connections."""
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


def _is_loopback(ip: str) -> bool:
  try:
    return ipaddress.ip_address(ip).is_loopback
  except ValueError:
    return False


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
    spec.run()
    ray.actor.exit_actor()


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
    local: bool,
    run: runs.Run,
    tls: TlsConfig | None,
  ):
    self._plan = plan
    self._tls = tls
    self._resources = resources
    self._coordinator = coordinator
    self._address = address
    self._local = local
    self._env = {process_main.RUN_DIR_VARIABLE: str(run.path)} if local else {}
    # Actor names are node names: unique within a namespace of this launch.
    self._namespace = f"{run.name}-{uuid.uuid4().hex[:8]}"
    self._nodes = {node.name: node for node in plan.workers}
    self._actors: dict[str, _Actor] = {}
    self._changed = threading.Condition()

  def start_all(self) -> None:
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
      )
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
    """Ends every actor still there (one whose node could not start outlives its run)."""
    self.kill(list(self._nodes))


_IMPORT_HINT = (
  "; the node's code must be importable where Ray runs it: install it in the cluster's "
  "image, or ship it with a runtime_env working_dir (see the Ray section of the docs)"
)


def _death(error: BaseException | None) -> tuple[str, str]:
  """(description, details) of an actor's end that its node did not report."""
  if isinstance(error, ray.exceptions.RayActorError):
    return "its Ray actor died before the node reported how it ended", str(error)
  cause = getattr(error, "cause", None) or error
  hint = _IMPORT_HINT if isinstance(cause, ImportError) else ""
  return f"its Ray actor could not run the node: {type(cause).__name__}: {cause}{hint}", str(error)

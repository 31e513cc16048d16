"""Real Ray clusters on loopback, each in a directory of its own, for the
Ray launcher's tests: two nodes (`start`), or one head started by `ray start`
(`start_head`); and a local Ray instance in the test's own process
(`local_ray`).

Run as a script, it starts a head node and a second node, both with node IP
127.0.0.1 (on which Ray binds its servers to loopback only), each with a
custom resource of its own ({"head_node": 4}, {"second_node": 4}), its own
temp directory and log monitor; prints one JSON line (the GCS address and
both node ids); and shuts the cluster down when its stdin closes or it gets
SIGTERM. Its
directory is a short temporary one, not pytest's: Ray puts Unix sockets in
it, whose paths may not exceed 107 bytes.

Why not two `ray start ... --block` processes: in Ray 2.60 `ray start`
replaces 127.0.0.1, given as --node-ip-address or in --address, by this
machine's outward IP, on which Ray listens on every interface; and with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps 127.0.0.1, it refuses to
start a second node. Ray's own test cluster (ray.cluster_utils.Cluster)
takes the node IP as given, so it makes the nodes here.

The head also runs a Ray Client server (`client_address`, ray://127.0.0.1:PORT),
with gRPC's fork handlers off (GRPC_ENABLE_FORK_SUPPORT=false in its
environment): in Ray 2.60 it forks a server per client while its other
threads are in gRPC calls, and with the handlers on (grpcio's default) that
server sometimes died in gRPC's code before its exec (about one connection
in twenty here, one in five under heavier load; docs/remote_ray.md).

    python tests/ray_cluster.py DIRECTORY
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
# Ray's switch that keeps 127.0.0.1 as it is (see above), for `ray start`.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Bound on the cluster's start (two nodes take ~10 s on a loaded 2-core machine).
START_SECONDS = 120.0
# Bound on its shutdown, after which what is left is killed.
STOP_SECONDS = 30.0
# What each node has: logical CPUs (more than the machine's two: the nodes
# of the tests ask for a tenth each) and its own custom resource.
NODE_CPUS = 4
NODE_RESOURCE_AMOUNT = 4


@dataclasses.dataclass(frozen=True)
class RayCluster:
  """A running cluster: where to join it, and its nodes' ids."""

  address: str  # the head's GCS, 127.0.0.1:PORT
  client_address: str  # its Ray Client server, ray://127.0.0.1:PORT
  head_id: str
  second_id: str
  pid: int  # of the process that owns the cluster


@dataclasses.dataclass(frozen=True)
class RayHead:
  """A running one-node cluster of `ray start --head`."""

  address: str  # its GCS, 127.0.0.1:PORT
  pid: int  # of `ray start`, whose descendants are the node's processes


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
  """(process name, ip, port) of every TCP socket that `pid` and its
  descendants listen on."""
  found = []
  root = psutil.Process(pid)
  for process in [root, *root.children(recursive=True)]:
    try:
      name = process.name()
      for connection in process.net_connections("inet"):
        if connection.status == psutil.CONN_LISTEN:
          found.append((name, connection.laddr.ip, connection.laddr.port))
    except psutil.NoSuchProcess:
      continue
  return found


def is_loopback(ip: str) -> bool:
  """127.0.0.0/8, ::1, or 127.x mapped into IPv6 (a dual-stack socket bound to 127.0.0.1)."""
  address = ipaddress.ip_address(ip)
  mapped = getattr(address, "ipv4_mapped", None)
  return address.is_loopback or (mapped is not None and mapped.is_loopback)


def assert_loopback_only(pid: int, what: str) -> None:
  """Fails unless Ray's servers (a GCS and a raylet) are among the sockets
  `pid` and its descendants listen on, and every one of those is on loopback."""
  listening = listening_sockets(pid)
  names = {name for name, _, _ in listening}
  assert {"gcs_server", "raylet"} <= names, f"{what}: no Ray servers listening: {listening}"
  outside = [entry for entry in listening if not is_loopback(entry[1])]
  assert not outside, f"{what} listens beyond loopback: {outside}"


@contextlib.contextmanager
def local_ray(**init_args: Any) -> Iterator[str]:
  """A local Ray instance in this process, `ray.init(**init_args)`, on
  loopback only whichever test module ran first: Ray is imported through
  launchpad's Ray launcher, which sets Ray's loopback switch for the import
  (Ray reads it then, once). Its sockets are checked; yields its GCS address;
  shuts it down."""
  from launchpad.launch import ray as ray_launcher  # imports Ray, its switch set

  ray = ray_launcher.ray
  ray.init(**init_args)
  try:
    assert_loopback_only(os.getpid(), "the test's Ray instance")
    yield ray.get_runtime_context().gcs_address
  finally:
    ray.shutdown()


def start(log: pathlib.Path, env: dict[str, str]) -> Iterator[RayCluster]:
  """Starts the cluster in a child process whose output goes to `log`;
  yields it; stops it and every process of it, by pid, and removes its
  directory, keeping Ray's logs beside `log`."""
  directory = pathlib.Path(tempfile.mkdtemp(prefix="lpray-"))
  # Ray writes the address of a cluster it starts under $RAY_TMPDIR/ray, where
  # the `ray.init("auto")` of other Ray users on this machine would find it.
  (directory / "ray").mkdir()
  with log.open("w") as output:
    child = subprocess.Popen(
      [sys.executable, __file__, str(directory)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=output,
      text=True,
      env={**env, "RAY_TMPDIR": str(directory)},
    )
  try:
    line = _first_line(child, START_SECONDS)
    if not line:
      status = "still starting" if child.poll() is None else f"exit status {child.returncode}"
      raise RuntimeError(
        f"the Ray cluster did not start within {START_SECONDS} s ({status}); its log, "
        f"{log}:\n{log.read_text()[-5000:]}"
      )
    yield RayCluster(**json.loads(line), pid=child.pid)
  finally:
    _stop(child)
    _keep_logs(directory, log.parent / "ray-logs")
    shutil.rmtree(directory, ignore_errors=True)


def _keep_logs(directory: pathlib.Path, destination: pathlib.Path) -> None:
  """Copies the log directory of each node's Ray session to `destination`."""
  for logs in directory.glob("**/session_*/logs"):
    if not logs.parent.is_symlink():  # session_latest
      where = logs.parent.relative_to(directory)
      shutil.copytree(logs, destination / where, dirs_exist_ok=True, symlinks=True)


def start_head(log: pathlib.Path, env: dict[str, str]) -> Iterator[RayHead]:
  """Starts a one-node cluster with `ray start --head --block` on 127.0.0.1
  (Ray's switch at 0: it listens on loopback only), in `env`, its output to
  `log`; yields it; ends it by SIGTERM to its pid (Ray then
  stops the node's processes), killing by pid whatever is left."""
  with _reserved_port() as client_port:
    yield from _run_head(log, env, client_port)


def _run_head(log: pathlib.Path, env: dict[str, str], client_port: int) -> Iterator[RayHead]:
  directory = pathlib.Path(tempfile.mkdtemp(prefix="lpray-"))
  ray = pathlib.Path(sys.executable).with_name("ray")  # the CLI beside this Python
  command = [
    *(str(ray), "start", "--head", "--block", "--disable-usage-stats"),
    "--include-dashboard=false",
    f"--node-ip-address={LOOPBACK}",
    "--port=0",  # Ray picks the GCS port, and writes the address below
    f"--ray-client-server-port={client_port}",  # not 10001, which may be another head's
    f"--num-cpus={NODE_CPUS}",
    f"--temp-dir={directory}",
  ]
  with log.open("w") as output:
    child = subprocess.Popen(
      command,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE,
      stderr=output,
      text=True,
      env={**env, LOOPBACK_SWITCH: "0"},
    )
  try:
    address_file = directory / "ray_current_cluster"
    if not _wait_for_line(child, "This command will now block forever", START_SECONDS):
      raise RuntimeError(
        f"`ray start --head` did not start within {START_SECONDS} s; its log, {log}:\n"
        f"{log.read_text()[-5000:]}"
      )
    yield RayHead(address_file.read_text().strip(), child.pid)
  finally:
    _stop(child, signal.SIGTERM)
    _keep_logs(directory, log.parent / "ray-logs")
    shutil.rmtree(directory, ignore_errors=True)


def _wait_for_line(child: subprocess.Popen, text: str, timeout: float) -> bool:
  """Whether `child` printed a line containing `text` within `timeout`
  (False at once if it exits first); its other lines are dropped."""
  found: list[bool] = []
  done = threading.Event()

  def read() -> None:
    for line in child.stdout:
      if text in line and not found:
        found.append(True)
        done.set()
    done.set()

  threading.Thread(target=read, daemon=True).start()
  done.wait(timeout)
  return bool(found)


def _first_line(child: subprocess.Popen, timeout: float) -> str:
  lines: list[str] = []
  reader = threading.Thread(target=lambda: lines.append(child.stdout.readline()), daemon=True)
  reader.start()
  reader.join(timeout)
  return lines[0] if lines else ""


def _stop(child: subprocess.Popen, signum: int | None = None) -> None:
  """Closes the child's stdin, or sends it `signum`: it shuts its cluster
  down; then kills by pid whatever of it is left."""
  try:
    descendants = psutil.Process(child.pid).children(recursive=True)
  except psutil.NoSuchProcess:
    descendants = []
  if signum is None:
    child.stdin.close()
  else:
    child.send_signal(signum)
  try:
    child.wait(STOP_SECONDS)
  except subprocess.TimeoutExpired:
    child.kill()
    child.wait(STOP_SECONDS)
  _, alive = psutil.wait_procs(descendants, timeout=STOP_SECONDS)
  for process in alive:
    process.kill()
  psutil.wait_procs(alive, timeout=STOP_SECONDS)


def _node_args(resource: str, directory: pathlib.Path) -> dict:
  return {
    "node_ip_address": LOOPBACK,
    "num_cpus": NODE_CPUS,
    "resources": {resource: NODE_RESOURCE_AMOUNT},
    "temp_dir": str(directory),
  }


@contextlib.contextmanager
def _reserved_port() -> Iterator[int]:
  """A loopback port for Ray's Ray Client server, which takes no port 0
  (`ray start` starts one), kept from other processes for the block.

  A port found free and let go may be picked again by another cluster on
  this machine (another Python's test run beside this one); its Ray Client
  server, a gRPC server with SO_REUSEPORT (gRPC's default), would then share
  the port silently, taking half the connections. So a socket with
  SO_REUSEPORT stays bound to the port, not listening, until the block ends:
  the kernel hands a bound port to no one's port-0 bind, while the gRPC
  server (same option, same user) binds and listens beside it.
  """
  with socket.socket() as reservation:
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind((LOOPBACK, 0))
    yield reservation.getsockname()[1]


# Ray 2.60's Ray Client server gives each client a server of its own on
# the first port from 23000 that a plain bind finds free, then starts it in
# a child, which binds it seconds later with SO_REUSEPORT (gRPC's default).
# Two clusters on one machine (the test runs of other Pythons beside this
# one) whose first clients come within those seconds both pick 23000, both
# servers bind it, and a client may reach the other cluster's: "Version
# mismatch: the cluster was started with Python 3.12" in the 3.13 run.
RAY_CLIENT_TURN = pathlib.Path(tempfile.gettempdir()) / "launchpad-tests-ray-client.lock"
TURN_SECONDS = 600.0  # bound on the wait for another run's join (a test's own bound is 120 s)


@contextlib.contextmanager
def ray_client_turn() -> Iterator[None]:
  """Holds this machine's one turn to join a cluster through Ray Client
  for the block (a lock file other test runs share), so that no two
  clusters' Ray Client servers pick a per-client server's port at once
  (see RAY_CLIENT_TURN); fails after TURN_SECONDS."""
  with RAY_CLIENT_TURN.open("a") as lock:
    deadline = time.monotonic() + TURN_SECONDS
    while True:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() > deadline:
          raise RuntimeError(
            f"another test run held {RAY_CLIENT_TURN} for more than {TURN_SECONDS:g} s"
          ) from None
        threading.Event().wait(0.1)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environment(settings: dict[str, str]) -> Iterator[None]:
  """os.environ with `settings` for the block: what the processes started in it inherit."""
  saved = {name: os.environ.get(name) for name in settings}
  os.environ.update(settings)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def _wait_accepting(port: int, timeout: float) -> None:
  """Returns once 127.0.0.1:port accepts connections; fails after `timeout`."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((LOOPBACK, port), timeout=1.0).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise RuntimeError(f"the Ray Client server on port {port} did not start: {e}") from e
      time.sleep(0.1)


def main(directory: pathlib.Path) -> None:
  with _reserved_port() as client_port:
    _run_cluster(directory, client_port)


def _run_cluster(directory: pathlib.Path, client_port: int) -> None:
  from ray import cluster_utils

  head_args = {
    **_node_args("head_node", directory / "head"),
    "include_dashboard": False,
    "ray_client_server_port": client_port,
  }
  # For the head's processes only: its Ray Client server keeps the GCS
  # address 127.0.0.1 (it would rewrite it to the outward IP), and forks its
  # per-client servers without gRPC's fork handlers (see above).
  with _environment({LOOPBACK_SWITCH: "0", "GRPC_ENABLE_FORK_SUPPORT": "false"}):
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=head_args)
  _wait_accepting(client_port, START_SECONDS)
  # A log monitor of its own, as on a machine of its own: it streams the
  # output of the node's actors to their drivers.
  second_args = {**_node_args("second_node", directory / "second"), "include_log_monitor": True}
  second = cluster.add_node(**second_args)
  info = {
    "address": cluster.address,
    "client_address": f"ray://{LOOPBACK}:{client_port}",
    "head_id": cluster.head_node.node_id,
  }
  print(json.dumps({**info, "second_id": second.node_id}), flush=True)
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
  stop.wait()
  cluster.shutdown()


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))

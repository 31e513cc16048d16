"""The SSH launcher: nodes on other hosts, reached with the system's `ssh`.

One `ssh` connection per host carries everything: the program's code (see
`bundle.py`), the node payloads, the nodes' output back, and their exit
statuses. At its far end runs an agent (`agent.py`) that starts the nodes
from a fork server. The system client is used on purpose: users' ssh
configuration, agents, keys and jump hosts work as they do everywhere else.

Nodes bind on the host where they land and register their addresses with
the coordinator, which runs here, in the launcher; everything else (stop,
failures, restarts, `lp status`) works as with local processes. Closing the
connection, whichever way it closes, ends the nodes of its host.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from launchpad import errors
from launchpad.control.coordinator import Coordinator
from launchpad.courier import serialization
from launchpad.launch import agent, bundle, process_main, processes, registry
from launchpad.launch import hosts as hosts_lib
from launchpad.launch.output import OutputMux
from launchpad.launch.plan import Plan
from launchpad.launch.session import Session
from launchpad.nodes.base import Node
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

# How long a host gets to answer: ssh connects, logs in, and the agent starts.
CONNECT_SECONDS = 60.0
# How long a closing connection gets to end by itself before it is killed.
CLOSE_SECONDS = 10.0
# Batch mode: never wait for a password prompt nobody sees. Keep-alives: a
# connection whose network went away ends (and with it, its host's nodes)
# within 15 s.
SSH_OPTIONS = (
  "-T",
  "-o",
  "BatchMode=yes",
  "-o",
  "ServerAliveInterval=5",
  "-o",
  "ServerAliveCountMax=3",
  "-o",
  "ConnectTimeout=20",
)
# The coordinator listens on every interface: the hosts must reach it.
COORDINATOR_BIND = "[::]"


@dataclasses.dataclass(frozen=True)
class SshOptions:
  """Options of the SSH launcher (`lp.launch` arguments of the same names).

  Attributes:
    hosts: the hosts file (TOML), its parsed contents, or lp.launch.hosts.Hosts:
      which host runs each group (see docs/remote.md).
    log_dir: the run directory for node logs, on this host.
    tls: encrypt traffic between hosts: True makes a certificate for this
      launch; or give lp.TlsConfig.from_files(...).
  """

  hosts: str | pathlib.Path | Mapping[str, Any] | hosts_lib.Hosts | None = dataclasses.field(
    default=None,
    metadata=registry.flag(
      "the hosts file, in TOML",
      type=pathlib.Path,
      metavar="HOSTS.toml",
      required=True,
      see="docs/remote.md",
    ),
  )
  log_dir: str | pathlib.Path | None = None
  tls: bool | TlsConfig = False


class SshLauncher:
  """Every node on the host the hosts file gives its group."""

  options = SshOptions
  single_host = False
  nodes_travel = True

  def prepare(self, session: Session, options: SshOptions) -> _RemoteWorkers:
    """Connects to every host; raises HostError, naming the host and its
    nodes, when a host cannot be reached or cannot run nodes."""
    if options.hosts is None:
      raise errors.ProgramError(
        "the ssh launcher needs hosts: lp.launch(..., hosts='hosts.toml') or "
        "`lp launch --mode=ssh --hosts hosts.toml`; see docs/remote.md for the format."
      )
    if not shutil.which("ssh"):
      raise errors.LaunchpadError(
        "the ssh launcher runs the system's `ssh` client, which is not installed here; "
        "install OpenSSH's client (e.g. apt-get install openssh-client)."
      )
    plan = session.plan
    parsed = hosts_lib.load(options.hosts)
    placement = parsed.place(plan.workers)
    tls = TlsConfig.for_launch(options.tls)
    run = session.create_run(pathlib.Path(options.log_dir) if options.log_dir else None)
    output = OutputMux(run.path, sys.stdout)
    session.on_close("the node output", lambda: output.wait_drained(5.0))
    port = int(session.start_coordinator(COORDINATOR_BIND, tls).rpartition(":")[2])
    workers = _RemoteWorkers(plan, parsed, placement, output, session.coordinator, tls)
    session.on_close("the host connections", workers.close)
    workers.connect(bundle.make(), bundle.make_files(parsed.ship), port, parsed.coordinator)
    session.start_runtime(f"127.0.0.1:{port}", tls)
    return workers


LAUNCHER = SshLauncher()


class _RemoteWorkers:
  """The nodes of one program on their hosts (the controller's `Workers`)."""

  def __init__(
    self,
    plan: Plan,
    hosts: hosts_lib.Hosts,
    placement: dict[str, list[Node]],
    output: OutputMux,
    coordinator: Coordinator,
    tls: TlsConfig | None,
  ):
    self._plan = plan
    self._tls = tls
    self._output = output
    self._coordinator = coordinator
    self._connections = [
      _HostConnection(hosts.hosts[name], nodes, self) for name, nodes in placement.items()
    ]
    self._by_node = {n.name: c for c in self._connections for n in c.nodes}
    self._nodes = {node.name: node for node in plan.workers}
    self._order = list(self._nodes)
    self._streams: dict[str, Any] = {}
    self._running: dict[str, int] = {}  # node -> the run (its restarts) started last
    self._killed: set[str] = set()
    self._changed = threading.Condition()

  def connect(self, code: bytes, files: bytes, port: int, coordinator_host: str | None) -> None:
    """Opens every host's connection; raises HostError for those that fail."""
    for connection in self._connections:
      connection.open(code, files, port, coordinator_host)
    deadline = time.monotonic() + CONNECT_SECONDS
    problems = [p for c in self._connections if (p := c.wait_ready(deadline))]
    if problems:
      raise errors.HostError("\n".join(problems))

  def start_all(self) -> None:
    for name in self._order:
      self.start(name)

  def start(self, name: str) -> None:
    """Starts (or restarts) node `name` on its host."""
    connection = self._by_node[name]
    if connection.lost is not None:
      raise errors.HostError(connection.lost)
    spec = process_main.WorkerSpec(
      self._plan.program,
      connection.coordinator,
      self._plan.secret,
      self._nodes[name],
      {},
      self._tls,
    )
    run = self._coordinator.nodes[name].restarts
    stream = self._output.attach(name, self._order.index(name), f"{name}@{connection.host.name}")
    with self._changed:
      self._running[name] = run
      self._killed.discard(name)
      old = self._streams.pop(name, None)
      if old is not None:  # the run restarted from has not reported its exit yet
        old.close()
      self._streams[name] = stream
    connection.send(("start", name, run, serialization.cloudpickle_dumps(spec)))

  def join(self, timeout: float) -> bool:
    with self._changed:
      return self._changed.wait_for(lambda: not self._running, timeout)

  def kill(self, names: list[str]) -> None:
    with self._changed:
      self._killed.update(names)
    for connection in self._connections:
      mine = [n for n in names if self._by_node.get(n) is connection]
      if mine:
        connection.send(("kill", mine))

  def close(self) -> None:
    """Closes every connection: the agents kill what still runs and exit."""
    closers = [threading.Thread(target=c.close) for c in self._connections]
    for closer in closers:
      closer.start()
    for closer in closers:
      closer.join()
    with self._changed:
      for name in list(self._running):
        self._ended(name)

  # Called by the connections' reader threads.

  def output(self, name: str, data: bytes) -> None:
    stream = self._streams.get(name)
    if stream is not None:
      stream.sendall(data)

  def exited(self, name: str, run: int, pid: int, returncode: int, oom_killed: bool) -> None:
    with self._changed:
      if self._running.get(name) != run:
        return  # a run the node was restarted from: the new run goes on
      killed = name in self._killed
      self._ended(name)
    if not killed:
      processes.report_exit(
        self._coordinator,
        name,
        pid,
        self._by_node[name].host.name,
        returncode,
        oom_killed,
        self._output,
        run,
      )

  def lost(self, connection: _HostConnection, reason: str) -> None:
    """The connection ended while its nodes ran: they are gone with it."""
    with self._changed:
      runs = {n.name: self._running[n.name] for n in connection.nodes if n.name in self._running}
      for name in runs:
        self._ended(name)
    for name, run in runs.items():
      processes.report_unannounced_exit(
        self._coordinator, name, 0, connection.host.name, reason, self._output, run
      )

  def _ended(self, name: str) -> None:
    """Caller holds self._changed."""
    self._running.pop(name, None)
    stream = self._streams.pop(name, None)
    if stream is not None:
      stream.close()
    self._changed.notify_all()


class _HostConnection:
  """The ssh connection to one host, and the agent at its far end."""

  def __init__(self, host: hosts_lib.Host, nodes: list[Node], workers: _RemoteWorkers):
    self.host = host
    self.nodes = nodes
    self.coordinator = ""  # the coordinator's address as this host reaches it
    self._workers = workers
    self._process: subprocess.Popen | None = None
    self._channel: agent.Channel | None = None
    self._ready = threading.Event()
    self._info: dict[str, str] | None = None
    self._stderr: deque[str] = deque(maxlen=20)
    self._stderr_done = threading.Event()
    self._closing = False
    self.lost: str | None = None  # why the connection ended, if it ended unasked

  def open(self, code: bytes, files: bytes, port: int, coordinator_host: str | None) -> None:
    self._process = subprocess.Popen(
      ["ssh", *SSH_OPTIONS, *self.host.ssh_options, self.host.ssh, self._remote_command()],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      start_new_session=True,  # a Ctrl-C in the terminal must not cut the connection
    )
    self._channel = agent.Channel(self._process.stdout, self._process.stdin)
    setup = agent.Setup(code, port, coordinator_host, self.host.address, self.host.workdir, files)
    name = f"ssh-{self.host.name}"
    threading.Thread(target=self._read, args=(setup,), name=name, daemon=True).start()
    threading.Thread(target=self._read_stderr, name=f"{name}-stderr", daemon=True).start()

  def _remote_command(self) -> str:
    """What the host's shell runs: the agent, under the host's environment."""
    variables = [f"{k}={v}" for k, v in self.host.env.items()]
    words = ["exec", "env", *variables, *self.host.python_command(), "-c", agent.BOOTSTRAP]
    return shlex.join(words)

  def wait_ready(self, deadline: float) -> str | None:
    """None once the agent is ready, else what went wrong, in words."""
    if not self._ready.wait(max(0.0, deadline - time.monotonic())):
      return self._problem(f"it did not answer within {CONNECT_SECONDS:.0f} s")
    if self._info is None:
      self._stderr_done.wait(5.0)
      return self._problem(self._exit_reason(self._process.wait()))
    return None

  def _problem(self, what: str) -> str:
    nodes = ", ".join(n.name for n in self.nodes)
    return f"host {self.host.name!r} (ssh {self.host.ssh}): {what}. Nodes meant for it: {nodes}."

  def send(self, message: object) -> None:
    # Bounded without a timeout of its own: if the host stops reading, ssh's
    # keep-alives end the connection within 15 s, and the write fails.
    try:
      self._channel.send(message)
    except OSError:
      pass  # the connection is gone; its reader reports the nodes lost

  def close(self) -> None:
    self._closing = True
    if self._process is None:
      return
    try:
      self._process.stdin.close()
    except OSError:
      pass
    try:
      self._process.wait(CLOSE_SECONDS)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()

  def _read(self, setup: agent.Setup) -> None:
    try:
      banner = self._channel.skip_to_magic()
      if banner.strip():
        log.info("host %s printed before the agent started: %r", self.host.name, banner[-200:])
      self._channel.send(("setup", setup))
      _, self._info = self._channel.receive()
      self.coordinator = self._info["coordinator"]
      self._ready.set()
      while True:
        self._dispatch(self._channel.receive())
    except (EOFError, OSError):
      pass
    returncode = self._process.wait()
    self._ready.set()
    if not self._closing:
      self._stderr_done.wait(5.0)
      self.lost = (
        f"the SSH connection to host {self.host.name} ended: {self._exit_reason(returncode)}"
      )
      self._workers.lost(self, self.lost)

  def _dispatch(self, message: tuple) -> None:
    kind = message[0]
    if kind == "output":
      self._workers.output(message[1], message[2])
    elif kind == "exited":
      self._workers.exited(*message[1:])

  def _read_stderr(self) -> None:
    for raw in self._process.stderr:
      line = raw.decode(errors="replace").rstrip()
      self._stderr.append(line)
      log.info("host %s: %s", self.host.name, line)
    self._stderr_done.set()

  def _exit_reason(self, returncode: int) -> str:
    said = "; ".join(self._stderr)
    if returncode == 255:
      return f"ssh could not connect or log in ({said or 'no message'})"
    if returncode == agent.NOT_INSTALLED:
      return (
        f"launchpad is not installed for {self.host.python!r} there ({said}); install it "
        "on the host (the same version as here), or point python = ... at an interpreter "
        "that has it"
      )
    if returncode == 127:
      return f"{self.host.python!r} was not found there ({said}); set python = ... for the host"
    return f"the agent exited with status {returncode} ({said or 'no message'})"

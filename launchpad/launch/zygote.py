"""A fork server for node processes, and the keeper that each node runs under.

Started once per launcher process (and per SSH agent); it imports launchpad
(and grpc, cloudpickle, ...) once, then forks a child per node on
request: a node process is ready in milliseconds instead of the fraction of
a second a fresh interpreter takes.

Every node process is forked by a keeper of its own, a child of the fork
server and a child subreaper (`PR_SET_CHILD_SUBREAPER`): whatever the node
starts and leaves behind, in its session or in a new one, is re-parented to
the keeper rather than to init. The keeper reaps those orphans while the
node runs, and when the node ends, however it ends, it kills everything
that is left of the node's process tree before it reports the node's exit.
So the descendants of a node end with it, and one node's end never touches
another node's descendants. The fork server is a subreaper too, for the
descendants of a keeper that someone killed; and when the launcher goes away
(its socket closes, even after SIGKILL) it kills every node and waits until
its whole tree is gone before it exits.

The launcher names each start with a key of its own and never waits for
the fork server: a start costs the fork server one fork, and the keeper
forks the node while the next start is on its way.

Messages on the socket are length-prefixed pickles. Launcher -> server:
("start", key, payload, command, env) with the node's output descriptor
attached (SCM_RIGHTS), and ("kill", key). `command` None forks the node from
the server, else the keeper runs `command` (a fresh interpreter) with
environment `env`, the payload on its standard input. Server -> launcher:
("started", key, pid) and ("exited", key, pid, returncode, oom_killed).
"""

from __future__ import annotations

import array
import functools
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

import psutil

from launchpad import errors
from launchpad.launch import process_main

_LENGTH = struct.Struct("<Q")
# What a keeper tells the fork server: the node's pid once it is forked, then
# its wait status and whether the out-of-memory killer was at work meanwhile.
_NODE_PID = struct.Struct("<q")
_NODE_END = struct.Struct("<i?")
# How the launcher starts a fork server (the socket's descriptor follows).
COMMAND = "import socket, sys; from launchpad.launch import zygote; zygote.serve(socket.socket(fileno=int(sys.argv[1])))"
# Exit status of a node process whose command could not be executed.
EXEC_FAILED = 127


class ForkServer:
  """The launcher's end of a fork server."""

  def __init__(
    self,
    on_exit: Callable[[int, int, int, bool], None],
    env: dict[str, str],
    on_started: Callable[[int, int], None] = lambda key, pid: None,
  ):
    """`on_exit(key, pid, returncode, oom_killed)` is called once the node
    process of start `key` has ended and its descendants are gone
    (`oom_killed`: the kernel's out-of-memory killer killed a process of its
    memory cgroup while it ran), `on_started(key, pid)` as it begins, both in
    a thread of the server's. The children inherit `env`."""
    ours, theirs = socket.socketpair()
    self._process = subprocess.Popen(
      [sys.executable, "-c", COMMAND, str(theirs.fileno())],
      pass_fds=[theirs.fileno()],
      env=env,
      start_new_session=True,
    )
    theirs.close()
    self._sock = ours
    self._on_started = on_started
    self._on_exit = on_exit
    self._running: dict[int, int] = {}  # start key -> pid (0 until known)
    self._closing = False
    self._lock = threading.Lock()
    threading.Thread(target=self._read, name="fork-server", daemon=True).start()

  def start(
    self,
    key: int,
    payload: bytes,
    output: socket.socket,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
  ) -> None:
    """Starts a node process running `payload` with its output into
    `output`: forked, or `command` with environment `env`. Returns at once;
    `key`, the caller's name for this start, comes back with its events."""
    with self._lock:
      self._running[key] = 0
      try:
        send_message(self._sock, ("start", key, payload, command, env), [output.fileno()])
      except OSError as e:
        del self._running[key]
        raise errors.LaunchpadError(
          f"the fork server of node processes is gone ({e}); the program cannot start nodes."
        ) from e

  def kill(self, key: int) -> None:
    """SIGKILL to the node process of start `key` and its whole session; its
    keeper then kills whatever else it started."""
    with self._lock:
      try:
        send_message(self._sock, ("kill", key))
      except OSError:
        pass  # the fork server is gone, and its nodes with it

  def close(self) -> None:
    """Ends the fork server; it kills whatever node processes it still has."""
    self._closing = True
    try:
      self._sock.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass
    try:
      self._process.wait(10.0)
    except subprocess.TimeoutExpired:
      self._process.kill()

  def _read(self) -> None:
    try:
      while True:
        message, _ = receive_message(self._sock)
        with self._lock:
          self._running[message[1]] = message[2]
          if message[0] == "exited":
            del self._running[message[1]]
        if message[0] == "started":
          self._on_started(*message[1:])
        else:
          self._on_exit(*message[1:])
    except (EOFError, OSError):
      pass
    if not self._closing:  # the fork server died: its nodes died with it
      with self._lock:
        running, self._running = self._running, {}
      for key, pid in running.items():
        self._on_exit(key, pid, -signal.SIGKILL, False)


def send_message(sock: socket.socket, message: object, fds: list[int] = ()) -> None:
  data = pickle.dumps(message)
  header = _LENGTH.pack(len(data))
  if fds:
    sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    sock.sendall(data)
  else:
    sock.sendall(header + data)


def receive_message(sock: socket.socket) -> tuple[object, list[int]]:
  """One message and the descriptors sent with it; EOFError when the peer left."""
  fds = array.array("i")
  header, ancillary, _, _ = sock.recvmsg(_LENGTH.size, socket.CMSG_SPACE(fds.itemsize * 4))
  if not header:
    raise EOFError
  for level, kind, data in ancillary:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
      fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
  while len(header) < _LENGTH.size:
    more = sock.recv(_LENGTH.size - len(header))
    if not more:
      raise EOFError
    header += more
  (size,) = _LENGTH.unpack(header)
  data = bytearray()
  while len(data) < size:
    chunk = sock.recv(min(size - len(data), 1 << 20))
    if not chunk:
      raise EOFError
    data += chunk
  return pickle.loads(data), list(fds)


class _Keeper:
  """A keeper as the fork server sees it: its start, the pipe on which it
  reports, and its node's pid once reported."""

  def __init__(self, key: int, report: int):
    self.key = key
    self.report = report
    self.listening = True  # for its node's pid
    self.node_pid = 0
    self.kill_requested = False


class _Server:
  """The fork server's state: its keepers, by pid."""

  def __init__(self, sock: socket.socket):
    self.sock = sock
    self.wake_r, wake_w = socket.socketpair()
    self.wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    self._closing = [sock, self.wake_r, wake_w]
    self.selector = selectors.DefaultSelector()
    self.selector.register(sock, selectors.EVENT_READ)
    self.selector.register(self.wake_r, selectors.EVENT_READ)
    self.keepers: dict[int, _Keeper] = {}

  def start(self, key: int, node: Callable[[], NoReturn], output_fd: int) -> None:
    """Forks the keeper of start `key`, which forks `node()`."""
    report_r, report_w = os.pipe()
    try:
      pid = os.fork()
    except OSError as e:
      os.close(report_r)
      os.close(report_w)
      sys.stderr.write(f"launchpad: the fork server cannot fork a node process: {e}\n")
      self.send(("exited", key, 0, 1, False))
      return
    if pid == 0:
      signal.set_wakeup_fd(-1)
      signal.signal(signal.SIGCHLD, signal.SIG_DFL)
      for sock in self._closing:
        sock.close()
      os.close(report_r)
      _never_return(lambda: _keep(node, output_fd, report_w))
    os.close(report_w)
    self.keepers[pid] = keeper = _Keeper(key, report_r)
    self.selector.register(report_r, selectors.EVENT_READ, keeper)

  def kill(self, key: int) -> None:
    for keeper in self.keepers.values():
      if keeper.key == key:
        keeper.kill_requested = True
        if keeper.node_pid:
          _kill_session(keeper.node_pid)

  def started(self, keeper: _Keeper) -> None:
    """Reads the node's pid that the keeper reported (or the keeper's end)."""
    if not keeper.listening:
      return  # an event of the same select() as its end, which read it already
    self.selector.unregister(keeper.report)
    keeper.listening = False
    data = _read_exactly(keeper.report, _NODE_PID.size)
    if data is None:
      return  # the keeper died first; its end is reported when it is reaped
    (keeper.node_pid,) = _NODE_PID.unpack(data)
    if keeper.kill_requested:
      _kill_session(keeper.node_pid)
    self.send(("started", keeper.key, keeper.node_pid))

  def reap(self) -> None:
    """Reports the nodes whose keepers ended, and kills what is re-parented
    to the fork server: descendants of a keeper that was killed."""
    for child in psutil.Process().children():
      if child.pid not in self.keepers:
        try:
          os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    while True:
      try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        return
      keeper = self.keepers.pop(pid, None)
      if keeper is not None:
        self.ended(keeper)

  def ended(self, keeper: _Keeper) -> None:
    if keeper.listening:  # its pid report was not read yet
      self.started(keeper)
    data = _read_exactly(keeper.report, _NODE_END.size)
    os.close(keeper.report)
    if data is None:  # the keeper was killed: its node died of the parent-death signal
      returncode, oom_killed = -signal.SIGKILL, False
    else:
      status, oom_killed = _NODE_END.unpack(data)
      returncode = os.waitstatus_to_exitcode(status)
    self.send(("exited", keeper.key, keeper.node_pid, returncode, oom_killed))

  def send(self, message: tuple) -> None:
    try:
      send_message(self.sock, message)
    except OSError:
      pass  # the launcher is gone; the loop ends on its end of the socket

  def end(self) -> None:
    """Kills every node, then everything else, and waits until all is gone."""
    for keeper in self.keepers.values():
      if keeper.node_pid:
        _kill_session(keeper.node_pid)
    _kill_descendants()


def serve(sock: socket.socket) -> None:
  """The fork server's loop; returns when the launcher is gone and every
  process it started has ended."""
  import launchpad  # noqa: F401 - loaded once here, shared by every child
  from launchpad.control import client  # noqa: F401 - gRPC, which every node runtime uses

  process_main.prctl(process_main.PR_SET_CHILD_SUBREAPER, 1)
  signal.signal(signal.SIGCHLD, lambda *_: None)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides how nodes stop
  server = _Server(sock)
  try:
    while True:
      for ready, _ in server.selector.select():
        if ready.fileobj is server.wake_r:
          _drain(server.wake_r)
          server.reap()
        elif ready.data is not None:
          server.started(ready.data)
        else:
          try:
            message, fds = receive_message(sock)
          except (EOFError, OSError):
            return
          if message[0] == "kill":
            server.kill(message[1])
            continue
          _, key, payload, command, env = message
          node = functools.partial(_node, payload, fds[0], command, env)
          server.start(key, node, fds[0])
          os.close(fds[0])
  finally:
    server.end()


def _kill_session(pid: int) -> None:
  """SIGKILL to a node process's whole session (its own children die with
  it), or to the process alone if it has no session of its own yet."""
  for kill in (os.killpg, os.kill):
    try:
      kill(pid, signal.SIGKILL)
      return
    except OSError:
      continue


def _keep(node: Callable[[], NoReturn], output_fd: int, report: int) -> NoReturn:
  """The keeper: forks the node, reaps what is re-parented to it while the
  node runs, kills what is left when the node has ended, then tells the
  fork server how the node ended."""
  process_main.prctl(process_main.PR_SET_CHILD_SUBREAPER, 1)
  process_main.die_with_parent()
  oom_kills = oom_kill_count()
  node_pid = os.fork()
  if node_pid == 0:
    os.close(report)
    _never_return(node)
  os.close(output_fd)  # the node's output ends when the node's processes do
  os.write(report, _NODE_PID.pack(node_pid))
  while True:
    pid, status = os.waitpid(-1, 0)
    if pid == node_pid:
      break
  _kill_descendants()
  oom_killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
  os.write(report, _NODE_END.pack(status, oom_killed and oom_kill_count() > oom_kills))
  os._exit(0)


def _node(payload: bytes, output_fd: int, command: list[str] | None, env) -> NoReturn:
  """The node process: forked (no `command`), or `command` executed."""
  if command is None:
    process_main.run(payload, output_fd)
  _exec(command, env, payload, output_fd)


def _exec(command: list[str], env: dict[str, str], payload: bytes, output_fd: int) -> NoReturn:
  """Replaces this process with `command`, the payload on its standard input."""
  try:
    stdin = os.memfd_create("launchpad-node")
    os.write(stdin, payload)
    os.lseek(stdin, 0, os.SEEK_SET)
    os.dup2(stdin, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    os.execve(command[0], command, env)
  except OSError as e:
    os.write(2, f"cannot run the node's interpreter {command[0]}: {e}\n".encode())
  os._exit(EXEC_FAILED)


def _never_return(body: Callable[[], NoReturn]) -> NoReturn:
  """Runs `body` in a forked child: whatever it raises, the child exits and
  never unwinds into the fork server's loop (whose cleanup would kill the
  other nodes)."""
  try:
    body()
  except BaseException:  # noqa: BLE001 - told on stderr; the child must end here
    traceback.print_exc()
  finally:
    os._exit(1)


def _kill_descendants() -> None:
  """Kills every child of this process and waits for it; the children of
  those are re-parented here (a subreaper) and killed in turn, until none is
  left."""
  while True:
    for child in psutil.Process().children():
      try:
        os.kill(child.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    try:
      os.waitpid(-1, 0)
    except ChildProcessError:
      return


def _read_exactly(fd: int, size: int) -> bytes | None:
  data = b""
  while len(data) < size:
    more = os.read(fd, size - len(data))
    if not more:
      return None
    data += more
  return data


def oom_kill_count() -> int:
  """How many processes the kernel's out-of-memory killer has killed in this
  process's memory cgroup (cgroup v2 `memory.events`, v1
  `memory.oom_control`); 0 where neither can be read."""
  try:
    with open("/proc/self/cgroup") as f:
      lines = f.read().splitlines()
  except OSError:
    return 0
  for line in lines:
    hierarchy, controllers, path = line.split(":", 2)
    if "memory" in controllers.split(","):
      candidate = f"/sys/fs/cgroup/memory{path}/memory.oom_control"
    elif hierarchy == "0":
      candidate = f"/sys/fs/cgroup{path}/memory.events"
    else:
      continue
    try:
      with open(candidate) as f:
        fields = dict(line.split() for line in f.read().splitlines() if line.strip())
    except (OSError, ValueError):
      continue
    if "oom_kill" in fields:
      return int(fields["oom_kill"])
  return 0


def _drain(sock: socket.socket) -> None:
  try:
    while sock.recv(4096):
      pass
  except BlockingIOError:
    pass

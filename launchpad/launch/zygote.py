"""A fork server for node processes.

Started once per launcher process; it imports launchpad (and so grpc,
cloudpickle, ...) once, then forks a child per node on request: a node
process is ready in milliseconds instead of the fraction of a second a fresh
interpreter takes. It reports each child's exit status back, and when the
launcher goes away (its socket closes, even after SIGKILL) it kills every
child it started and exits, so no node outlives its launcher.

Messages on the socket are length-prefixed pickles. Launcher -> server:
("start", payload) with the node's output descriptor attached (SCM_RIGHTS).
Server -> launcher: ("started", pid) and ("exited", pid, returncode).
"""

from __future__ import annotations

import array
import os
import pickle
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable

from launchpad import errors

_LENGTH = struct.Struct("<Q")
# How the launcher starts a fork server (the socket's descriptor follows).
COMMAND = "import socket, sys; from launchpad.launch import zygote; zygote.serve(socket.socket(fileno=int(sys.argv[1])))"


class ForkServer:
  """The launcher's end of a fork server."""

  def __init__(self, on_exit: Callable[[int, int], None], env: dict[str, str]):
    """`on_exit(pid, returncode)` is called, in a thread of the server's, as
    each child exits; the children inherit `env`."""
    ours, theirs = socket.socketpair()
    self._process = subprocess.Popen(
      [sys.executable, "-c", COMMAND, str(theirs.fileno())],
      pass_fds=[theirs.fileno()],
      env=env,
      start_new_session=True,
    )
    theirs.close()
    self._sock = ours
    self._on_exit = on_exit
    self._started: queue.SimpleQueue = queue.SimpleQueue()
    self._lock = threading.Lock()
    threading.Thread(target=self._read, name="fork-server", daemon=True).start()

  def start(self, payload: bytes, output: socket.socket) -> int:
    """Forks a node process running `payload`; returns its pid."""
    with self._lock:
      send_message(self._sock, ("start", payload), [output.fileno()])
      reply = self._started.get(timeout=60.0)
    if isinstance(reply, BaseException):
      raise reply
    return reply

  def close(self) -> None:
    """Ends the fork server; it kills whatever children it still has."""
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
        if message[0] == "started":
          self._started.put(message[1])
        else:
          self._on_exit(message[1], message[2])
    except (EOFError, OSError):
      self._started.put(errors.LaunchpadError("the fork server of node processes died"))


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


def serve(sock: socket.socket) -> None:
  """The fork server's loop; returns when the launcher is gone."""
  import launchpad  # noqa: F401 - loaded once here, shared by every child
  from launchpad.launch import process_main

  wake_r, wake_w = socket.socketpair()
  wake_r.setblocking(False)
  wake_w.setblocking(False)
  signal.set_wakeup_fd(wake_w.fileno())
  signal.signal(signal.SIGCHLD, lambda *_: None)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides how nodes stop
  selector = selectors.DefaultSelector()
  selector.register(sock, selectors.EVENT_READ)
  selector.register(wake_r, selectors.EVENT_READ)
  children: set[int] = set()
  try:
    while True:
      for key, _ in selector.select():
        if key.fileobj is wake_r:
          _drain(wake_r)
          _reap(sock, children)
          continue
        try:
          message, fds = receive_message(sock)
        except (EOFError, OSError):
          return
        _, payload = message
        pid = os.fork()
        if pid == 0:
          signal.set_wakeup_fd(-1)
          signal.signal(signal.SIGCHLD, signal.SIG_DFL)
          sock.close()
          wake_r.close()
          wake_w.close()
          process_main.run(payload, fds[0])
        os.close(fds[0])
        children.add(pid)
        send_message(sock, ("started", pid))
  finally:
    for pid in children:
      kill_session(pid)


def kill_session(pid: int) -> None:
  """SIGKILL to a node process's whole session (its own children die with
  it), or to the process alone if it has no session of its own yet."""
  for kill in (os.killpg, os.kill):
    try:
      kill(pid, signal.SIGKILL)
      return
    except OSError:
      continue


def _drain(sock: socket.socket) -> None:
  try:
    while sock.recv(4096):
      pass
  except BlockingIOError:
    pass


def _reap(sock: socket.socket, children: set[int]) -> None:
  while children:
    try:
      pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
      return
    if pid == 0:
      return
    children.discard(pid)
    send_message(sock, ("exited", pid, os.waitstatus_to_exitcode(status)))

"""The far end of the SSH launcher: one agent per host, started over `ssh`.

The agent unpacks the program's code bundle, starts node processes from a
fork server of its own, streams their output back, and reports their exits.
Its standard input and output are the SSH channel: length-prefixed pickles,
after a magic string that tells them apart from whatever a login shell
prints first. When the channel closes (the launcher ended, was killed, or the
connection dropped), the agent kills every node it started, and the fork
server every process those started, removes the code and exits: nothing
outlives the launch on any host.

Launcher -> agent: ("setup", Setup), then ("start", name, run, payload) and
("kill", [names]). Agent -> launcher: ("ready", info), ("output", name, bytes),
("exited", name, run, pid, returncode, oom_killed). `run` is the node's
restart count at that start, so a launcher can tell a restarted node's old
process's exit from the new one's.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import pickle
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
from typing import BinaryIO

from launchpad import version
from launchpad.launch import bundle, process_main, zygote

MAGIC = b"\x00LPAGENT1\x00"
# Exit status of the bootstrap when launchpad cannot be imported on the host.
NOT_INSTALLED = 97
# What the host's Python runs: check that launchpad is there, then serve.
BOOTSTRAP = f"""\
import sys
try:
  from launchpad.launch import agent
except ImportError as e:
  sys.stderr.write(f"launchpad cannot be imported by {{sys.executable}}: {{e}}\\n")
  sys.exit({NOT_INSTALLED})
agent.main()
"""
_LENGTH = struct.Struct("<Q")
# How long an exit report waits for the rest of the node's output.
OUTPUT_DRAIN_SECONDS = 1.0


@dataclasses.dataclass
class Setup:
  """What the launcher tells an agent before starting nodes."""

  bundle: bytes
  coordinator_port: int
  # The launcher's address as this host reaches it; None: where SSH came from.
  coordinator_host: str | None
  # The address this host's nodes bind and advertise; None: where SSH arrived.
  address: str | None
  # Where nodes run (created if missing); None: beside the unpacked code.
  workdir: str | None
  # A bundle of files to put in the working directory (bundle.make_files).
  files: bytes


class Channel:
  """Length-prefixed pickles over a pair of byte streams."""

  def __init__(self, reader: BinaryIO, writer: BinaryIO):
    self._reader = reader
    self._writer = writer
    self._lock = threading.Lock()

  def send(self, message: object) -> None:
    data = pickle.dumps(message)
    with self._lock:
      self._writer.write(_LENGTH.pack(len(data)) + data)
      self._writer.flush()

  def receive(self) -> object:
    """The next message; EOFError once the other end closed."""
    (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
    return pickle.loads(self._read(size))

  def skip_to_magic(self) -> bytes:
    """Skips what precedes MAGIC (a login banner, say); returns the skipped bytes."""
    seen = b""
    while not seen.endswith(MAGIC):
      seen += self._read(1)
    return seen[: -len(MAGIC)]

  def _read(self, n: int) -> bytes:
    data = self._reader.read(n)
    if len(data) < n:
      raise EOFError
    return data


def main() -> None:
  """Serves the launcher on standard input and output until it goes away."""
  writer = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # stray prints must not corrupt the message stream
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides how nodes stop
  channel = Channel(sys.stdin.buffer, writer)
  writer.write(MAGIC)
  writer.flush()
  message = channel.receive()
  agent = _Agent(channel, message[1])
  try:
    agent.serve()
  finally:
    agent.close()


class _Agent:
  def __init__(self, channel: Channel, setup: Setup):
    self._channel = channel
    self._code = pathlib.Path(tempfile.mkdtemp(prefix="launchpad-code-"))
    bundle.extract(setup.bundle, self._code)
    client_ip, server_ip = _ssh_addresses()
    address = setup.address or server_ip
    coordinator_host = setup.coordinator_host or client_ip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self._code), env.get("PYTHONPATH")) if p)
    env[process_main.HOST_VARIABLE] = address
    workdir = pathlib.Path(setup.workdir).expanduser() if setup.workdir else self._code
    workdir.mkdir(parents=True, exist_ok=True)
    bundle.extract(setup.files, workdir)
    os.chdir(workdir)
    self._starts: dict[int, tuple[str, int]] = {}  # the fork server's key -> node, run
    self._keys = itertools.count()
    self._closed: dict[int, threading.Event] = {}  # key -> its output was all sent
    self._lock = threading.Lock()
    self._selector = selectors.DefaultSelector()
    self._wake_r, self._wake_w = socket.socketpair()
    self._selector.register(self._wake_r, selectors.EVENT_READ)
    threading.Thread(target=self._forward_output, name="output", daemon=True).start()
    self._fork_server = zygote.ForkServer(self._exited, env)
    self._channel.send(
      (
        "ready",
        {
          "coordinator": _format_host(coordinator_host) + f":{setup.coordinator_port}",
          "address": address,
          "hostname": socket.gethostname(),
          "python": sys.executable,
          "launchpad": version.installed_version(),
        },
      )
    )

  def serve(self) -> None:
    while True:
      try:
        message = self._channel.receive()
      except (EOFError, OSError):
        return
      if message[0] == "start":
        self._start(*message[1:])
      elif message[0] == "kill":
        for name in message[1]:
          self._kill(name)

  def _start(self, name: str, run: int, payload: bytes) -> None:
    ours, theirs = socket.socketpair()
    key = next(self._keys)
    with self._lock:
      self._starts[key] = (name, run)
      self._closed[key] = threading.Event()
    self._fork_server.start(key, payload, theirs)
    theirs.close()
    self._selector.register(ours, selectors.EVENT_READ, (key, name))
    self._wake_w.send(b"x")

  def _kill(self, name: str) -> None:
    with self._lock:
      keys = [key for key, (n, _) in self._starts.items() if n == name]
    for key in keys:
      self._fork_server.kill(key)

  def _exited(self, key: int, pid: int, returncode: int, oom_killed: bool) -> None:
    with self._lock:
      start = self._starts.pop(key, None)
      closed = self._closed.get(key)
    if start is None:
      return
    if closed is not None:  # its last lines go first: they explain the exit
      closed.wait(OUTPUT_DRAIN_SECONDS)
    self._send(("exited", *start, pid, returncode, oom_killed))

  def _forward_output(self) -> None:
    while True:
      for key, _ in self._selector.select():
        if key.data is None:
          self._wake_r.recv(4096)
          continue
        start, name = key.data
        data = key.fileobj.recv(65536)
        if data:
          self._send(("output", name, data))
          continue
        self._selector.unregister(key.fileobj)
        key.fileobj.close()
        with self._lock:
          self._closed.pop(start).set()

  def _send(self, message: object) -> None:
    try:
      self._channel.send(message)
    except OSError:
      pass  # the launcher is gone; close() ends everything

  def close(self) -> None:
    """Kills every node still running, and all they started, and removes the code."""
    self._fork_server.close()
    shutil.rmtree(self._code, ignore_errors=True)


def _ssh_addresses() -> tuple[str, str]:
  """(the launcher's address, this host's address) of the SSH connection."""
  fields = os.environ.get("SSH_CONNECTION", "").split()
  if len(fields) != 4:
    return "127.0.0.1", "127.0.0.1"  # not under sshd: a local agent
  return fields[0], fields[2]


def _format_host(host: str) -> str:
  return f"[{host}]" if ":" in host else host

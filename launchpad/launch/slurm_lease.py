"""The lease that ties a program's Slurm jobs to their launcher.

The batch script of each job is a holder (`hold`): it connects back to the
launcher over TCP, says which job it is, and waits. When the connection
closes, whichever way (the launcher ended, was killed with SIGKILL, its
machine went away: TCP keep-alives notice within ~30 s), the holder exits,
its job ends with it, and Slurm ends every step of the job, the nodes
included: nothing of the program stays queued or running. A preemption
notice (sbatch --signal=B:SIG@T, sent to the batch step) goes back up the
connection, so the launcher can stop the program gracefully.

Holder -> launcher: "TOKEN JOB_ID\\n" once, then "signal NAME\\n" per notice.
Launcher -> holder: nothing; closing the connection ends the job.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

log = logging.getLogger(__name__)

# The variable that carries the lease token into the batch script.
TOKEN_VARIABLE = "LAUNCHPAD_SLURM_LEASE"
# What the holder runs (its arguments: the launcher's host and port, and
# the preemption signal's name or '-').
HOLD_COMMAND = "from launchpad.launch import slurm_lease; slurm_lease.hold()"
# How long a holder tries to reach its launcher, and how long the launcher
# waits for a connection's first line.
CONNECT_SECONDS = 60.0
HELLO_SECONDS = 10.0
# TCP keep-alive: a connection whose other end vanished ends within ~30 s.
KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 4}


def keep_alive(connection: socket.socket) -> None:
  connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  for name, value in KEEPALIVE.items():
    if hasattr(socket, name):
      connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Leases:
  """The launcher's end: accepts the holders of its jobs.

  Args:
    on_signal: called with (job id, signal name) when a job's holder got a
      preemption notice.
    on_lost: called with the job id when a job's connection closed before
      `release` (the job was cancelled, or reached its time limit).
  """

  def __init__(self, on_signal: Callable[[str, str], None], on_lost: Callable[[str], None]):
    self.token = secrets.token_hex(16)
    self._on_signal = on_signal
    self._on_lost = on_lost
    self._connections: dict[str, socket.socket] = {}
    self._released: set[str] = set()
    self._changed = threading.Condition()
    if socket.has_dualstack_ipv6():
      self._server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      self._server = socket.create_server(("0.0.0.0", 0))
    self.port = self._server.getsockname()[1]
    threading.Thread(target=self._accept, name="slurm-leases", daemon=True).start()

  def wait(self, job_id: str, timeout: float) -> bool:
    """True once job `job_id`'s holder has connected, within `timeout` s."""
    with self._changed:
      return self._changed.wait_for(lambda: job_id in self._connections, timeout)

  def release(self, job_ids: list[str]) -> None:
    """Closes these jobs' connections: their holders exit, their jobs end."""
    with self._changed:
      self._released.update(job_ids)
      connections = [self._connections.get(j) for j in job_ids]
    for connection in connections:
      if connection is not None:
        _close(connection)

  def close(self) -> None:
    """Stops accepting; the connections are released by `release`."""
    _close(self._server)

  def _accept(self) -> None:
    while True:
      try:
        connection, _ = self._server.accept()
      except OSError:
        return  # closed
      threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

  def _serve(self, connection: socket.socket) -> None:
    reader = connection.makefile("rb")
    job_id = self._hello(connection, reader)
    if job_id is None:
      _close(connection)
      return
    with self._changed:
      released = job_id in self._released
      self._connections[job_id] = connection
      self._changed.notify_all()
    if released:  # released while its holder was still on the way
      _close(connection)
    try:
      for line in reader:
        kind, _, value = line.decode(errors="replace").strip().partition(" ")
        if kind == "signal":
          self._on_signal(job_id, value)
    except OSError:
      pass
    with self._changed:
      released = job_id in self._released
    if not released:
      self._on_lost(job_id)

  def _hello(self, connection: socket.socket, reader: BinaryIO) -> str | None:
    """The job id a connection says it holds, if it knows the token."""
    connection.settimeout(HELLO_SECONDS)
    try:
      line = reader.readline(256).decode(errors="replace")
    except OSError:
      return None
    connection.settimeout(None)
    token, _, job_id = line.strip().partition(" ")
    if not hmac.compare_digest(token.encode(), self.token.encode()) or not job_id.isdigit():
      log.warning("a connection to the Slurm lease port without the lease token was closed")
      return None
    keep_alive(connection)
    return job_id


def _close(connection: socket.socket) -> None:
  try:
    connection.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass
  connection.close()


def script(python: str, host: str, port: int, preempt: signal.Signals | None) -> str:
  """The batch script of a job held by a launcher at host:port."""
  words = [python, "-c", HOLD_COMMAND, host, str(port), preempt.name if preempt else "-"]
  return "#!/bin/sh\nexec " + " ".join(_quote(w) for w in words) + "\n"


def _quote(word: str) -> str:
  return "'" + word.replace("'", "'\\''") + "'"


def hold() -> None:
  """The batch script of a job: holds the job while the launcher's connection lasts."""
  host, port, preempt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  token = os.environ.pop(TOKEN_VARIABLE, "")
  job_id = os.environ.get("SLURM_JOB_ID", "")
  connection = _connect(host, port)
  connection.sendall(f"{token} {job_id}\n".encode())
  keep_alive(connection)

  def notice(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    print(f"launchpad: job {job_id} got {name} (preemption notice); telling the launcher")
    try:
      connection.sendall(f"signal {name}\n".encode())
    except OSError:
      pass

  if preempt != "-":
    signal.signal(signal.Signals[preempt], notice)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  connection.settimeout(None)
  try:
    while connection.recv(4096):
      pass
  except OSError:
    pass
  print(f"launchpad: the launcher's connection closed; job {job_id} ends", flush=True)


def _connect(host: str, port: int) -> socket.socket:
  deadline = time.monotonic() + CONNECT_SECONDS
  while True:
    try:
      return socket.create_connection((host, port), timeout=HELLO_SECONDS)
    except OSError as e:
      if time.monotonic() > deadline:
        sys.exit(f"launchpad: cannot reach the launcher at {host}:{port} ({e}); the job ends")
      time.sleep(1.0)

"""The lease that ties a program's Slurm jobs to their launcher.

The batch script of each job is a holder (`hold`): it connects back to the
launcher over TCP, proves it belongs to the program, says which job it is,
and waits. When the connection closes, whichever way (the launcher ended,
was killed with SIGKILL, its machine went away: TCP keep-alives notice
within ~30 s), the holder exits, its job ends with it, and Slurm ends every
step of the job, the nodes included: nothing of the program stays queued or
running. A preemption notice (sbatch --signal=B:SIG@T, sent to the batch
step) goes back up the connection, so the launcher can stop the program
gracefully.

The listener binds every interface, so each connection first passes
courier's mutual handshake (`protocol.server_handshake`, `client_handshake`)
keyed by the lease key, an HMAC of the program secret that the batch script
gets in its environment (the secret itself stays out of Slurm's records):
nothing crosses the network that would let a listener prove it later, a
recorded handshake fails against a fresh nonce, and a holder whose launcher
died does not let another process that took the port hold its job. The
whole handshake, the job id included, has one deadline.

Holder -> launcher, after the handshake: "JOB_ID\\n" once, then
"signal NAME\\n" per notice. Launcher -> holder: nothing; closing the
connection ends the job.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from launchpad import accept_loop, errors
from launchpad.courier import bounded_io, protocol
from launchpad.timeouts import Deadline

log = logging.getLogger(__name__)

# The variable that carries the lease key (hex) into the batch script.
KEY_VARIABLE = "LAUNCHPAD_SLURM_LEASE"
# What the holder runs (its arguments: the launcher's host and port, and
# the preemption signal's name or '-').
HOLD_COMMAND = "from launchpad.launch import slurm_lease; slurm_lease.hold()"
# How long a holder tries to reach its launcher, and how long a connection
# has for its whole handshake, however it paces its bytes.
CONNECT_SECONDS = 60.0
HANDSHAKE_SECONDS = 10.0
# The longest job id line a holder may send ("4294967295\n" and then some).
MAX_JOB_ID_BYTES = 32
# TCP keep-alive: a connection whose other end vanished ends within ~30 s.
KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 4}
_CONTEXT = b"launchpad-slurm-lease"


def lease_key(secret: bytes) -> bytes:
  """The key holders of the program whose secret is `secret` prove they know."""
  return hmac.new(secret, _CONTEXT, hashlib.sha256).digest()


def keep_alive(connection: socket.socket) -> None:
  connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  for name, value in KEEPALIVE.items():
    if hasattr(socket, name):
      connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Leases:
  """The launcher's end: accepts the holders of its jobs.

  Args:
    secret: the program secret; holders prove they know its lease key.
    on_signal: called with (job id, signal name) when a job's holder got a
      preemption notice.
    on_lost: called with the job id when a job's connection closed before
      `release` (the job was cancelled, or reached its time limit).
    handshake_timeout: seconds a connection has for its whole handshake.
  """

  def __init__(
    self,
    secret: bytes,
    on_signal: Callable[[str, str], None],
    on_lost: Callable[[str], None],
    handshake_timeout: float = HANDSHAKE_SECONDS,
  ):
    self._key = lease_key(secret)
    self._on_signal = on_signal
    self._on_lost = on_lost
    self._handshake_timeout = handshake_timeout
    self._connections: dict[str, socket.socket] = {}
    self._released: set[str] = set()
    self._changed = threading.Condition()
    self._stopped = threading.Event()
    if socket.has_dualstack_ipv6():
      self._server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      self._server = socket.create_server(("0.0.0.0", 0))
    self.port = self._server.getsockname()[1]
    self._acceptor = accept_loop.Acceptor("the Slurm leases", self._serve, self._stopped)
    self._acceptor.listen(self._server, "slurm-leases")

  @property
  def holder_key(self) -> str:
    """What the batch scripts' environment carries (KEY_VARIABLE)."""
    return self._key.hex()

  @property
  def shed(self) -> int:
    """Connections closed in their handshake to free descriptors (accept_loop)."""
    return self._acceptor.shed

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
    self._stopped.set()
    _close(self._server)
    self._acceptor.wake_pending()

  def _serve(self, connection: socket.socket) -> None:
    job_id = self._hello(connection)
    if job_id is None:
      connection.close()
      return
    keep_alive(connection)
    with self._changed:
      released = job_id in self._released
      self._connections[job_id] = connection
      self._changed.notify_all()
    if released:  # released while its holder was still on the way
      _close(connection)
    try:
      for line in connection.makefile("rb"):
        kind, _, value = line.decode(errors="replace").strip().partition(" ")
        if kind == "signal":
          self._on_signal(job_id, value)
    except OSError:
      pass
    with self._changed:
      released = job_id in self._released
    if not released:
      self._on_lost(job_id)

  def _hello(self, connection: socket.socket) -> str | None:
    """The job id a connection holds, once it proved it knows the lease key
    (None otherwise); one deadline for all of it."""
    deadline = Deadline(self._handshake_timeout, "the handshake of a Slurm job's holder")
    try:
      try:
        if not protocol.server_handshake(connection, self._key, deadline):
          log.warning("refused a connection to the Slurm lease port without the lease key")
          return None
        return _read_job_id(connection, deadline)
      finally:
        self._acceptor.done(connection)
    except errors.CallTimeoutError as e:
      log.info("closed a connection to the Slurm lease port: %s", e)
    except (EOFError, OSError):
      pass  # it went away, or was shed
    return None


def _read_job_id(connection: socket.socket, deadline: Deadline) -> str | None:
  """The holder's "JOB_ID\\n", read byte by byte (what follows it is read
  line by line afterwards); None if it is not one."""
  line = bytearray()
  byte = memoryview(bytearray(1))
  while len(line) < MAX_JOB_ID_BYTES:
    if not bounded_io.recv_into(connection, byte, deadline, "while reading the job id"):
      return None
    if byte[0] == ord("\n"):
      job_id = line.decode(errors="replace")
      return job_id if job_id.isdigit() else None
    line += byte
  return None


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
  job_id = os.environ.get("SLURM_JOB_ID", "")
  try:
    key = bytes.fromhex(os.environ.pop(KEY_VARIABLE, ""))
  except ValueError:
    key = b""
  if not key:
    sys.exit(f"launchpad: job {job_id} has no lease key in ${KEY_VARIABLE}; the job ends")
  address = f"{host}:{port}"
  connection = _connect(host, port)
  deadline = Deadline(HANDSHAKE_SECONDS, f"job {job_id}'s handshake with its launcher at {address}")
  try:
    protocol.client_handshake(connection, key, address, deadline)
  except errors.AuthenticationError:
    sys.exit(
      f"launchpad: job {job_id}: the launcher at {address} and this job do not share the "
      "program's lease key (another program's launcher took the address, or the job's "
      "environment was changed); the job ends"
    )
  except (errors.LaunchpadError, EOFError, OSError) as e:
    sys.exit(f"launchpad: job {job_id}: no handshake with the launcher at {address} ({e}); ends")
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
  try:
    # The launcher counts the job as held from here, with the notice handler in place.
    protocol.send_all(connection, f"{job_id}\n".encode(), deadline, "while sending the job id")
    while connection.recv(4096):
      pass
  except OSError:
    pass
  print(f"launchpad: the launcher's connection closed; job {job_id} ends", flush=True)


def _connect(host: str, port: int) -> socket.socket:
  deadline = time.monotonic() + CONNECT_SECONDS
  while True:
    try:
      connection = socket.create_connection((host, port), timeout=HANDSHAKE_SECONDS)
    except OSError as e:
      if time.monotonic() > deadline:
        sys.exit(f"launchpad: cannot reach the launcher at {host}:{port} ({e}); the job ends")
      time.sleep(1.0)
      continue
    connection.settimeout(None)  # deadlines bound each wait from here on
    return connection

"""The Slurm lease without a cluster: the launcher's `Leases` on loopback,
and holders that are real processes running the batch script's command.

A holder must prove it knows the program's lease key before anything it
sends counts; what crosses the network does not let anyone prove it later;
the whole handshake has one deadline; and the listener keeps accepting once
its process ran out of file descriptors.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from launchpad.courier import protocol
from launchpad.launch import slurm_lease
from tests.crowded import crowded_child, limit_descriptors

TIMEOUT = 60.0
# How far past its deadline a handshake may be cut on a loaded machine.
MARGIN = 10.0
JOB = "4242"


class Recorded:
  """What a `Leases` told the launcher: (job id, signal name) and lost jobs."""

  def __init__(self):
    self.signals: queue.Queue = queue.Queue()
    self.lost: queue.Queue = queue.Queue()

  def leases(self, secret: bytes, **kwargs) -> slurm_lease.Leases:
    return slurm_lease.Leases(
      secret, lambda job, name: self.signals.put((job, name)), self.lost.put, **kwargs
    )


@pytest.fixture
def secret() -> bytes:
  return os.urandom(32)


@pytest.fixture
def recorded() -> Recorded:
  return Recorded()


@pytest.fixture
def leases(secret, recorded) -> Iterator[slurm_lease.Leases]:
  leases = recorded.leases(secret)
  yield leases
  leases.close()


def start_holder(port: int, key: str, job: str = JOB, preempt: str = "SIGUSR1") -> subprocess.Popen:
  """A holder process, as a job's batch script starts it."""
  env = {**os.environ, slurm_lease.KEY_VARIABLE: key, "SLURM_JOB_ID": job}
  return subprocess.Popen(
    [sys.executable, "-c", slurm_lease.HOLD_COMMAND, "127.0.0.1", str(port), preempt],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def ended(holder: subprocess.Popen) -> tuple[int, str, str]:
  """The holder's exit status and output, once it exited (killed past TIMEOUT)."""
  try:
    out, err = holder.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    holder.kill()
    out, err = holder.communicate()
    pytest.fail(f"the holder did not exit within {TIMEOUT} s: {out}{err}")
  return holder.returncode, out, err


def connect(port: int) -> socket.socket:
  return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def closed_by_peer(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
  """Everything the peer sent until it closed the connection."""
  sock.settimeout(timeout)
  data = b""
  try:
    while chunk := sock.recv(4096):
      data += chunk
  except ConnectionResetError:
    pass
  return data


def test_a_holder_with_the_key_holds_its_job_and_passes_notices_on(leases, secret, recorded):
  holder = start_holder(leases.port, slurm_lease.lease_key(secret).hex())
  try:
    assert leases.wait(JOB, TIMEOUT), "the holder never registered its job"
    holder.send_signal(signal.SIGUSR1)
    assert recorded.signals.get(timeout=TIMEOUT) == (JOB, "SIGUSR1")
    leases.release([JOB])
    status, out, err = ended(holder)
  finally:
    holder.kill()
  assert status == 0, err
  assert f"job {JOB} ends" in out
  assert recorded.lost.empty()  # released, not lost


def test_a_holder_of_another_program_is_refused_and_says_why(leases):
  holder = start_holder(leases.port, slurm_lease.lease_key(os.urandom(32)).hex())
  status, _, err = ended(holder)
  assert status != 0
  assert f"job {JOB}" in err and "do not share the program's lease key" in err
  assert not leases.wait(JOB, 0)


def test_a_peer_without_the_secret_can_send_nothing(leases, secret, recorded):
  # The old protocol's bearer line, then a notice: the launcher reads them as
  # a wrong proof, refuses, and closes the connection.
  peer = connect(leases.port)
  greeting = peer.recv(len(protocol.MAGIC) + protocol.NONCE_SIZE, socket.MSG_WAITALL)
  assert greeting.startswith(protocol.MAGIC)
  peer.sendall(f"{'0' * 64} {JOB}\nsignal SIGUSR1\n".ljust(64).encode())
  assert closed_by_peer(peer) == protocol.AUTH_REFUSED
  peer.close()
  # Whatever the peer could have caused happened before its connection closed;
  # a real holder's notice is the first and only one that arrives.
  holder = start_holder(leases.port, slurm_lease.lease_key(secret).hex(), job="7")
  try:
    assert leases.wait("7", TIMEOUT)
    holder.send_signal(signal.SIGUSR1)
    assert recorded.signals.get(timeout=TIMEOUT) == ("7", "SIGUSR1")
  finally:
    holder.kill()
    holder.communicate()
  assert not leases.wait(JOB, 0)
  assert recorded.signals.empty()


class Recorder:
  """A TCP relay in front of `port` that keeps what its one client sent."""

  def __init__(self, port: int):
    self._listener = socket.create_server(("127.0.0.1", 0))
    self.port = self._listener.getsockname()[1]
    self._upstream = port
    self.sent = b""
    self.done = threading.Event()
    threading.Thread(target=self._relay, daemon=True).start()

  def _relay(self) -> None:
    client, _ = self._listener.accept()
    self._listener.close()
    server = connect(self._upstream)
    threading.Thread(target=self._copy, args=(server, client, False), daemon=True).start()
    self._copy(client, server, True)
    self.done.set()

  def _copy(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
    try:
      while chunk := source.recv(4096):
        if record:
          self.sent += chunk
        sink.sendall(chunk)
    except OSError:
      pass
    for sock in (source, sink):
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass


def test_a_recorded_handshake_replayed_is_refused(leases, secret):
  recorder = Recorder(leases.port)
  holder = start_holder(recorder.port, slurm_lease.lease_key(secret).hex())
  try:
    assert leases.wait(JOB, TIMEOUT)
  finally:
    leases.release([JOB])
    ended(holder)
  assert recorder.done.wait(TIMEOUT)
  assert len(recorder.sent) >= protocol.PROOF_SIZE + protocol.NONCE_SIZE
  replay = connect(leases.port)
  replay.recv(len(protocol.MAGIC) + protocol.NONCE_SIZE, socket.MSG_WAITALL)
  replay.sendall(recorder.sent)
  assert closed_by_peer(replay) == protocol.AUTH_REFUSED
  replay.close()


def cut_after(peer: socket.socket, dribble: float, bound: float) -> float | None:
  """Sends `peer` a byte every `dribble` s until the other end closes; the
  seconds that took (None: still open after `bound` s)."""
  start = time.monotonic()
  while time.monotonic() - start < bound:
    if select.select([peer], [], [], dribble)[0]:
      try:
        if not peer.recv(1):
          return time.monotonic() - start
      except ConnectionResetError:
        return time.monotonic() - start
    try:
      peer.send(b"x")
    except OSError:
      return time.monotonic() - start
  return None


def test_a_dribbled_handshake_is_cut_at_its_deadline(secret, recorded):
  deadline = 2.0
  # A byte this often is more often than any timeout per read would fire;
  # the proof is 64 bytes, so the dribble would last 16 s.
  dribble = 0.25
  leases = recorded.leases(secret, handshake_timeout=deadline)
  try:
    start = time.monotonic()  # before the launcher's deadline starts
    peer = connect(leases.port)
    greeting = peer.recv(len(protocol.MAGIC) + protocol.NONCE_SIZE, socket.MSG_WAITALL)
    assert greeting.startswith(protocol.MAGIC)
    cut = cut_after(peer, dribble, deadline + MARGIN)
    peer.close()
  finally:
    leases.close()
  assert cut is not None, f"the launcher held a dribbling handshake past {deadline + MARGIN} s"
  assert time.monotonic() - start >= deadline


def serve_leases_with_few_descriptors(pipe, secret: bytes, spare: int) -> None:
  """Child process: Leases that may open only `spare` more descriptors."""
  leases = slurm_lease.Leases(secret, lambda job, name: None, lambda job: None)
  limit_descriptors(spare)
  pipe.send(leases.port)
  try:
    while (request := pipe.recv()) is not None:
      pipe.send(leases.shed if request == "shed" else leases.wait(request, TIMEOUT))
  except EOFError:
    pass


@pytest.fixture
def crowded_leases(secret) -> Iterator[tuple[int, object]]:
  with crowded_child(
    serve_leases_with_few_descriptors, secret, 40, timeout=TIMEOUT, what="crowded lease listener"
  ) as (pipe, _):
    yield pipe.recv(), pipe


def ask(pipe, request: str):
  pipe.send(request)
  assert pipe.poll(TIMEOUT + MARGIN)
  return pipe.recv()


def wait_for(condition: Callable[[], bool], what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert time.monotonic() < deadline, what
    time.sleep(0.01)


def test_the_listener_survives_running_out_of_descriptors(crowded_leases, secret):
  port, pipe = crowded_leases
  # Idle connections, more than the listener's process has descriptors for
  # and fewer than its backlog (connecting never waits for an accept).
  flood = [connect(port) for _ in range(100)]
  holder = None
  try:
    wait_for(lambda: ask(pipe, "shed") > 0, "the flood never exhausted the descriptors")
    holder = start_holder(port, slurm_lease.lease_key(secret).hex())
    assert ask(pipe, JOB), "the holder that came after the flood was never accepted"
  finally:
    for sock in flood:
      sock.close()
    if holder is not None:
      holder.kill()
      holder.communicate()

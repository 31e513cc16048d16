"""The courier wire protocol: an authenticated handshake, then framed messages.

Why not gRPC for calls: on the machines this library targets a grpcio unary
call costs 40-100x a bare socket round trip (see docs/design.md). A frame here
is a fixed 16-byte header, the buffer lengths, a pickle, then the out-of-band
buffers. The calling thread writes and reads its own frames, so a synchronous
call costs two system calls on each side and no thread hand-off.

Handshake, before any frame: the server sends MAGIC and a random nonce; the
client answers with HMAC-SHA256(secret, nonce); the server replies one status
byte and closes the connection if the proof is wrong. Nothing is unpickled on
a connection that has not passed it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import socket
import struct
import time
from typing import NamedTuple

from launchpad import errors
from launchpad.courier import tls_socket
from launchpad.tls import TlsConfig

MAGIC = b"LPC1"
NONCE_SIZE = 32
PROOF_SIZE = 32
AUTH_OK = b"\x01"
AUTH_REFUSED = b"\x00"

# kind, flags, number of out-of-band buffers, call id, pickle length.
HEADER = struct.Struct("<BBHIQ")
MAX_BUFFERS = 0xFFFF
REQUEST, REPLY, ERROR = 1, 2, 3
# A request flagged CONCURRENT may run beside other requests of its connection;
# without it the server runs it in the connection's own thread.
CONCURRENT = 1

_CHUNK = 256 * 1024
_IOV_MAX = 512

# How long a reader polls a socket before it sleeps in the kernel. On virtual
# machines waking a sleeping thread costs 50-150 us, several times a whole
# round trip; a reader that polls for a moment after sending a request (or
# after replying to one) catches the next frame without that cost. See
# docs/design.md for the figures that set this value.
SPIN_SECONDS = 100e-6
# A caller polls for its reply a little longer than its recent round trips
# took, up to this: a replay insert (~150 us) then costs 250 us instead of
# 730 us, and a call that takes milliseconds wastes at most this much.
MAX_SPIN_SECONDS = 500e-6


def spin_for(round_trip: float) -> float:
  """How long to poll for a reply, given the connection's recent round trips."""
  return min(MAX_SPIN_SECONDS, max(SPIN_SECONDS, 1.5 * round_trip))


class Frame(NamedTuple):
  kind: int
  flags: int
  call_id: int
  payload: bytes | bytearray
  buffers: list[bytearray]


def proof(secret: bytes, nonce: bytes, role: bytes) -> bytes:
  """HMAC of a peer's nonce; `role` keeps a client's proof from serving as a server's."""
  return hmac.new(secret, role + nonce, hashlib.sha256).digest()


def server_handshake(sock: socket.socket, secret: bytes) -> bool:
  """Checks that the client knows `secret`, and proves that this server does.

  True if the client may send frames. The caller sets a timeout on `sock`.
  """
  nonce = os.urandom(NONCE_SIZE)
  sock.sendall(MAGIC + nonce)
  answer = _recv_exactly(sock, PROOF_SIZE + NONCE_SIZE)
  if not hmac.compare_digest(answer[:PROOF_SIZE], proof(secret, nonce, b"client")):
    sock.sendall(AUTH_REFUSED)
    return False
  sock.sendall(AUTH_OK + proof(secret, answer[PROOF_SIZE:], b"server"))
  return True


def client_handshake(sock: socket.socket, secret: bytes, address: str) -> None:
  """Proves to the server that this client knows `secret`, and checks that the
  server does too: replies are unpickled, so they must come from the program."""
  greeting = _recv_exactly(sock, len(MAGIC) + NONCE_SIZE)
  if greeting[: len(MAGIC)] != MAGIC:
    raise errors.ConnectionLostError(
      f"{address} is not a launchpad courier server (bad greeting); check the address."
    )
  nonce = os.urandom(NONCE_SIZE)
  sock.sendall(proof(secret, greeting[len(MAGIC) :], b"client") + nonce)
  if _recv_exactly(sock, 1) != AUTH_OK:
    raise errors.AuthenticationError(
      f"the server at {address} refused this client's secret: the client "
      "belongs to another program or launch. Dereference handles inside the "
      "program they came from."
    )
  if not hmac.compare_digest(_recv_exactly(sock, PROOF_SIZE), proof(secret, nonce, b"server")):
    raise errors.AuthenticationError(
      f"the server at {address} does not know the program secret: another process "
      "took the address of the node. Nothing it sent was unpickled."
    )


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
  data = bytearray()
  while len(data) < n:
    chunk = sock.recv(n - len(data))
    if not chunk:
      raise EOFError("connection closed during the handshake")
    data += chunk
  return bytes(data)


def send_frame(
  sock: socket.socket,
  kind: int,
  flags: int,
  call_id: int,
  payload: bytes,
  buffers: list[memoryview],
) -> None:
  """Writes one frame; the buffers go from their own memory to the kernel."""
  header = HEADER.pack(kind, flags, len(buffers), call_id, len(payload))
  if not buffers:
    sock.sendall(header + payload)
    return
  lengths = struct.pack(f"<{len(buffers)}Q", *(b.nbytes for b in buffers))
  _send_vectored(sock, [memoryview(header + lengths), memoryview(payload), *buffers])


def _send_vectored(sock: socket.socket, parts: list[memoryview]) -> None:
  parts = [p.cast("B") if p.format != "B" or p.ndim != 1 else p for p in parts if p.nbytes]
  first = 0
  while first < len(parts):
    sent = sock.sendmsg(parts[first : first + _IOV_MAX])
    while first < len(parts) and sent >= parts[first].nbytes:
      sent -= parts[first].nbytes
      first += 1
    if sent:
      parts[first] = parts[first][sent:]


class FrameReader:
  """Reads frames from a blocking socket, many small frames per system call."""

  def __init__(self, sock: socket.socket):
    self._sock = sock
    self._buffer = bytearray(_CHUNK)
    self._view = memoryview(self._buffer)
    self._start = 0
    self._end = 0
    self._poller = select.poll()
    self._poller.register(sock, select.POLLIN)
    self._pending = getattr(sock, "pending", None)  # TLS sockets only

  def read(self, deadline: float | None = None, spin: float = 0.0) -> Frame:
    """Reads a whole frame; EOFError when the peer closed.

    Args:
      deadline: time.monotonic() by which the frame's first bytes must
        arrive, else TimeoutError; None waits as long as it takes.
      spin: seconds to poll without sleeping before waiting in the kernel.
    """
    if self._end == self._start:
      self._start = self._end = 0
      self._wait(deadline, spin)
    kind, flags, nbuffers, call_id, size = HEADER.unpack(self._take(HEADER.size))
    lengths = struct.unpack(f"<{nbuffers}Q", self._take(8 * nbuffers)) if nbuffers else ()
    payload = self._take(size)
    return Frame(kind, flags, call_id, payload, [self._take_owned(n) for n in lengths])

  def _take(self, n: int) -> bytes | bytearray:
    if n > _CHUNK // 2:
      return self._take_owned(n)
    self._fill(n)
    data = bytes(self._view[self._start : self._start + n])
    self._start += n
    return data

  def _take_owned(self, n: int) -> bytearray:
    """Reads `n` bytes into new memory, mostly straight from the kernel.

    (Anonymous maps would skip bytearray's zero-fill, but measured slower:
    malloc reuses freed memory, while a fresh map faults in every page.)
    """
    out = bytearray(n)
    have = min(n, self._end - self._start)
    out[:have] = self._view[self._start : self._start + have]
    self._start += have
    view = memoryview(out)
    while have < n:
      got = self._sock.recv_into(view[have:])
      if not got:
        raise EOFError("connection closed in the middle of a frame")
      have += got
    return out

  def _wait(self, deadline: float | None, spin: float) -> None:
    """Reads at least one byte, polling for `spin` seconds first."""
    if spin:
      end = time.perf_counter() + spin
      while time.perf_counter() < end:
        try:
          got = self._sock.recv_into(self._view[self._end :], 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
          continue
        if not got:
          raise EOFError("connection closed")
        self._end += got
        return
    if deadline is not None and not self._decrypted():
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not self._poller.poll(remaining * 1000):
        raise TimeoutError("no frame before the deadline")

  def _decrypted(self) -> bool:
    """Whether a TLS socket holds decrypted bytes, which polling cannot see."""
    return self._pending is not None and self._pending() > 0

  def _fill(self, n: int) -> None:
    if self._end - self._start >= n:
      return
    if self._start + n > len(self._buffer):
      remaining = self._end - self._start
      self._view[:remaining] = self._view[self._start : self._end]
      self._start, self._end = 0, remaining
    while self._end - self._start < n:
      got = self._sock.recv_into(self._view[self._end :])
      if not got:
        raise EOFError("connection closed")
      self._end += got


UNIX_PREFIX = "unix:"


def socket_address(address: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
  """'host:port', '[v6]:port', 'unix:/path' or 'unix:@abstract' -> (family, sockaddr)."""
  if address.startswith(UNIX_PREFIX):
    path = address[len(UNIX_PREFIX) :]
    return socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
    raise ValueError(f"bad courier address {address!r}: expected 'host:port' or 'unix:PATH'.")
  host = host.strip("[]")
  return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))


def connect(address: str, timeout: float | None, tls: TlsConfig | None = None) -> socket.socket:
  """Opens a stream socket to a courier address, with TCP_NODELAY where it
  applies, and TLS over TCP when `tls` is given."""
  family, sockaddr = socket_address(address)
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.settimeout(timeout)
    sock.connect(sockaddr)
    if family != socket.AF_UNIX:
      sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      if tls is not None:
        return tls_socket.wrap_client(sock, tls, timeout)
  except BaseException:
    sock.close()
    raise
  return sock


def format_address(host: str, port: int) -> str:
  return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

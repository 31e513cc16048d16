"""The courier wire protocol: an authenticated handshake, then framed messages.

Why not gRPC for calls: on the machines this library targets a grpcio unary
call costs 40-100x a bare socket round trip (see docs/design.md). A frame here
is a fixed 16-byte header, the buffer lengths, a pickle, then the out-of-band
buffers. The calling thread writes and reads its own frames, so a synchronous
call costs two system calls on each side and no thread hand-off.

Handshake, before any frame: the server sends MAGIC and a random nonce; the
client answers with HMAC-SHA256(secret, nonce); the server replies one status
byte and closes the connection if the proof is wrong. Nothing is unpickled on
a connection that has not passed it. On a Unix socket the client then sends
the server one end of its shared-memory channel (shared_memory.py).

Every function that waits for the peer takes a `Deadline` for all of its
work (a whole handshake, a whole frame), not a timeout per system call; see
`bounded_io` for how that costs no system call on the fast path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from launchpad import errors
from launchpad.courier import bounded_io, shared_memory, tls_socket
from launchpad.timeouts import Deadline
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
# A frame flagged SHARED has buffers in shared memory (shared_memory.py).
SHARED = 2

_CHUNK = 256 * 1024
# A pickle at least this large (a large `bytes` value travels inside it) is
# written from its own memory after the header, not copied behind it first:
# for a 16 MiB echo that copy, into memory never touched before, was a third
# of the sender's time (see docs/design.md).
LARGE_PAYLOAD = 64 * 1024
_IOV_MAX = 512
# A batch of small frames (FrameBatch) is written once it holds this many
# frames or bytes; a frame with a larger pickle, or with buffers, is never
# held back.
MAX_BATCH_FRAMES = 64
MAX_BATCH_BYTES = 64 * 1024
MAX_BATCHED_PAYLOAD = 4096
# A frame without out-of-band buffers whose pickle is at least this large is
# unpickled as it arrives (FrameReader's `load`): the large `bytes` values in
# it go from the kernel straight into their own memory, with no copy of the
# whole pickle first (see docs/design.md for the figures that set this).
STREAMED_PAYLOAD = 1 << 20

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
# A reader whose polls keep missing (the peer is slower than the poll, or the
# machine has no core to spare, so polling only takes CPU from the peer)
# stops polling for a while (Polling). See docs/design.md.
MAX_SPIN_MISSES = 2
MAX_SPIN_SKIPS = 256
# LAUNCHPAD_COURIER_SPIN=0 turns polling off in this process (readers always
# block), for machines shared with busy processes and to measure against.
SPIN_ENABLED = os.environ.get("LAUNCHPAD_COURIER_SPIN", "1") != "0"


def spin_for(round_trip: float) -> float:
  """How long to poll for a reply, given the connection's recent round trips."""
  return min(MAX_SPIN_SECONDS, max(SPIN_SECONDS, 1.5 * round_trip))


class Frame(NamedTuple):
  kind: int
  flags: int
  call_id: int
  payload: bytes | bytearray
  buffers: list[bytearray | memoryview]  # memoryview: read-only shared memory


def proof(secret: bytes, nonce: bytes, role: bytes) -> bytes:
  """HMAC of a peer's nonce; `role` keeps a client's proof from serving as a server's."""
  return hmac.new(secret, role + nonce, hashlib.sha256).digest()


def server_handshake(sock: socket.socket, secret: bytes, deadline: Deadline) -> bool:
  """Checks that the client knows `secret`, and proves that this server does.

  True if the client may send frames; the deadline's CallTimeoutError if the
  whole exchange is not done by then.
  """
  what = "during the handshake with the client"
  nonce = os.urandom(NONCE_SIZE)
  send_all(sock, MAGIC + nonce, deadline, what)
  answer = _recv_exactly(sock, PROOF_SIZE + NONCE_SIZE, deadline, what)
  if not hmac.compare_digest(answer[:PROOF_SIZE], proof(secret, nonce, b"client")):
    send_all(sock, AUTH_REFUSED, deadline, what)
    return False
  send_all(sock, AUTH_OK + proof(secret, answer[PROOF_SIZE:], b"server"), deadline, what)
  return True


def client_handshake(sock: socket.socket, secret: bytes, address: str, deadline: Deadline) -> None:
  """Proves to the server that this client knows `secret`, and checks that the
  server does too: replies are unpickled, so they must come from the program.
  The deadline bounds the whole exchange."""
  what = f"during the handshake with the server at {address}"
  greeting = _recv_exactly(sock, len(MAGIC) + NONCE_SIZE, deadline, what)
  if greeting[: len(MAGIC)] != MAGIC:
    raise errors.ConnectionLostError(
      f"{address} is not a launchpad courier server (bad greeting); check the address."
    )
  nonce = os.urandom(NONCE_SIZE)
  send_all(sock, proof(secret, greeting[len(MAGIC) :], b"client") + nonce, deadline, what)
  if _recv_exactly(sock, 1, deadline, what) != AUTH_OK:
    raise errors.AuthenticationError(
      f"the server at {address} refused this client's secret: the client "
      "belongs to another program or launch. Dereference handles inside the "
      "program they came from."
    )
  if not hmac.compare_digest(
    _recv_exactly(sock, PROOF_SIZE, deadline, what), proof(secret, nonce, b"server")
  ):
    raise errors.AuthenticationError(
      f"the server at {address} does not know the program secret: another process "
      "took the address of the node. Nothing it sent was unpickled."
    )


def _recv_exactly(sock: socket.socket, n: int, deadline: Deadline, what: str) -> bytes:
  data = bytearray(n)
  view = memoryview(data)
  have = 0
  while have < n:
    got = bounded_io.recv_into(sock, view[have:], deadline, what)
    if not got:
      raise EOFError("connection closed during the handshake")
    have += got
  return bytes(data)


# What was going on when a client's deadline passed.
_SENDING = "while sending the request"
_NO_REPLY = "no reply had arrived"
_STALLED = "the reply had begun to arrive, then stopped"


def send_all(sock: socket.socket, data: bytes, deadline: Deadline | None, what: str) -> None:
  """Writes `data` to a plain or TLS socket by `deadline` (None: no limit)."""
  if isinstance(sock, tls_socket.TlsSocket):
    sock.sendall(data, deadline, what)
  else:
    bounded_io.send_all(sock, data, deadline, what)


def send_frame(
  sock: socket.socket,
  kind: int,
  flags: int,
  call_id: int,
  payload: bytes | PayloadParts,
  buffers: list[memoryview],
  deadline: Deadline | None = None,
  shared: shared_memory.Channel | None = None,
) -> None:
  """Writes one frame; the buffers go from their own memory to the kernel,
  or, with a `shared` channel (Unix sockets), large ones as shared memory.

  Past `deadline` (None: no limit), its CallTimeoutError; part of the frame
  may have been written, so the connection must then be closed.
  """
  if not buffers and len(payload) < LARGE_PAYLOAD:
    data = HEADER.pack(kind, flags, 0, call_id, len(payload)) + payload
    if deadline is None or deadline.at is None:
      sock.sendall(data)
    elif isinstance(sock, tls_socket.TlsSocket):
      sock.sendall(data, deadline, _SENDING)
    else:  # bounded_io.send_all, its first try inline: the fast path of small calls
      try:
        sent = sock.send(data, socket.MSG_DONTWAIT)
      except BlockingIOError:
        sent = 0
      if sent < len(data):
        bounded_io.send_all(sock, memoryview(data)[sent:], deadline, _SENDING)
    return
  sizes = [b.nbytes for b in buffers]
  if shared is not None and sizes and shared.shares(sizes):
    flags |= SHARED
    buffers = shared.send(call_id, sizes, buffers, deadline)
  header = HEADER.pack(kind, flags, len(sizes), call_id, len(payload))
  lengths = struct.pack(f"<{len(sizes)}Q", *sizes)
  pickled = payload.parts if isinstance(payload, PayloadParts) else [payload]
  parts = [memoryview(header + lengths), *map(memoryview, pickled), *buffers]
  parts = [p.cast("B") if p.format != "B" or p.ndim != 1 else p for p in parts if p.nbytes]
  if isinstance(sock, tls_socket.TlsSocket):
    sock.sendmsg(parts, deadline, _SENDING)
  else:
    bounded_io.send_parts(sock, parts, deadline, _SENDING, _IOV_MAX)


class PayloadParts:
  """A pickle in pieces, as serialization.dumps makes it for values that
  hold large `bytes`: each of those is a piece of its own, written from its
  own memory instead of being copied into the pickle first."""

  __slots__ = ("parts", "size")

  def __init__(self, parts: list[bytes]):
    self.parts = parts
    self.size = sum(len(part) for part in parts)

  def __len__(self) -> int:
    return self.size


class FrameBatch:
  """Small frames held back to be written together, in one system call.

  Callers that pipeline many small calls (and a server answering them)
  spend most of a call's system time, and the waking of the peer it
  causes, in writing each frame on its own; a batch writes up to
  MAX_BATCH_FRAMES of them at once. Its owner decides when to write it
  and holds its connection's write lock around every method.
  """

  __slots__ = ("_frames", "_size", "call_ids")

  def __init__(self):
    self._frames: list[bytes] = []
    self._size = 0
    self.call_ids: list[int] = []  # of the frames held, in order

  def __bool__(self) -> bool:
    return bool(self._frames)

  @staticmethod
  def fits(payload: bytes, buffers: list) -> bool:
    """Whether a frame of `payload` and `buffers` may wait in a batch."""
    return not buffers and len(payload) <= MAX_BATCHED_PAYLOAD

  def add(self, kind: int, flags: int, call_id: int, payload: bytes) -> bool:
    """Holds a frame; True once the batch is full (write it then)."""
    self._frames.append(HEADER.pack(kind, flags, 0, call_id, len(payload)) + payload)
    self.call_ids.append(call_id)
    self._size += HEADER.size + len(payload)
    return len(self._frames) >= MAX_BATCH_FRAMES or self._size >= MAX_BATCH_BYTES

  def take(self, keep=None) -> bytes:
    """The frames held (those whose call id `keep` accepts), emptying the batch."""
    if keep is None:
      data = b"".join(self._frames)
    else:
      data = b"".join(f for f, i in zip(self._frames, self.call_ids, strict=True) if keep(i))
    self._frames, self._size, self.call_ids = [], 0, []
    return data


class Polling:
  """Whether a reader polls before it blocks: it stops while polls do not pay.

  After MAX_SPIN_MISSES misses in a row it skips polling for the next 1, 2,
  4, ... up to MAX_SPIN_SKIPS reads, then polls once to see whether it pays
  again; a hit starts over. Off for the process with LAUNCHPAD_COURIER_SPIN=0.
  """

  __slots__ = ("backoff", "misses", "skips")

  def __init__(self):
    self.misses = 0  # polls in a row that did not catch their bytes in time
    self.skips = 0  # reads left that block without polling
    self.backoff = 1  # reads the next run of misses skips

  def should_poll(self) -> bool:
    if not SPIN_ENABLED:
      return False
    if self.skips:
      self.skips -= 1
      return False
    return True

  def record(self, hit: bool) -> None:
    """Counts a poll that caught its bytes in time (hit) or did not."""
    if hit:
      self.misses, self.backoff = 0, 1
      return
    self.misses += 1
    if self.misses >= MAX_SPIN_MISSES:
      self.skips = self.backoff
      self.backoff = min(2 * self.backoff, MAX_SPIN_SKIPS)


class FrameReader:
  """Reads frames from a blocking socket, many small frames per system call;
  with a `shared` channel (Unix sockets), buffers in shared memory too.

  With `load`, a frame whose pickle is large (STREAMED_PAYLOAD) and has no
  out-of-band buffers is unpickled as it is read: `load` gets the pickle as
  a file (PayloadStream) and returns what the frame's payload is to be
  (serialization.load_stream); the whole frame is read when `read` returns.
  """

  def __init__(
    self,
    sock: socket.socket,
    shared: shared_memory.Channel | None = None,
    load: Callable[[PayloadStream], Any] | None = None,
  ):
    self._sock = sock
    self._shared = shared
    self._load = load
    self.polling = Polling()
    self._buffer = bytearray(_CHUNK)
    self._view = memoryview(self._buffer)
    self._start = 0
    self._end = 0

  def buffered(self) -> int:
    """How many bytes were read from the socket and not yet returned."""
    return self._end - self._start

  def has_frame(self) -> bool:
    """Whether a whole frame without buffers is already read (the next
    `read` returns it without a system call)."""
    have = self._end - self._start
    if have < HEADER.size:
      return False
    _, _, nbuffers, _, size = HEADER.unpack_from(self._buffer, self._start)
    return not nbuffers and have >= HEADER.size + size

  def read_ready(self, frames: list[Frame]) -> None:
    """Appends to `frames` the frames without buffers that are read whole
    already (at most STREAMED_PAYLOAD each), with no system call: a reader
    of many small replies takes all that one `recv` brought in one go."""
    buffer, view, start, end = self._buffer, self._view, self._start, self._end
    unpack_from, header = HEADER.unpack_from, HEADER.size
    while end - start >= header:
      kind, flags, nbuffers, call_id, size = unpack_from(buffer, start)
      stop = start + header + size
      if nbuffers or stop > end or size >= STREAMED_PAYLOAD:
        break
      frames.append(Frame(kind, flags, call_id, bytes(view[start + header : stop]), []))
      start = stop
    self._start = start

  def read(self, deadline: Deadline | None = None, spin: float = 0.0) -> Frame:
    """Reads a whole frame; EOFError when the peer closed.

    Args:
      deadline: by when the whole frame must have arrived, else its
        CallTimeoutError (the connection is then mid-frame: close it);
        None waits as long as it takes.
      spin: seconds to poll without sleeping before waiting in the kernel
        (never past the deadline).
    """
    if self._end == self._start:
      self._start = self._end = 0
      self._wait(deadline, spin)
    kind, flags, nbuffers, call_id, size = HEADER.unpack(self._take(HEADER.size, deadline))
    lengths = struct.unpack(f"<{nbuffers}Q", self._take(8 * nbuffers, deadline)) if nbuffers else ()
    if self._load is not None and not nbuffers and size >= STREAMED_PAYLOAD:
      return Frame(kind, flags, call_id, self._load_streamed(size, deadline), [])
    payload = self._take(size, deadline)
    if flags & SHARED:
      return Frame(kind, flags, call_id, payload, self._read_shared(call_id, lengths, deadline))
    return Frame(kind, flags, call_id, payload, [self._take_owned(n, deadline) for n in lengths])

  def _read_shared(self, call_id: int, lengths: tuple[int, ...], deadline: Deadline | None) -> list:
    if self._shared is None:
      raise EOFError("a frame referred to shared memory on a connection that cannot carry it")
    return self._shared.receive(call_id, lengths, lambda n: self._take_owned(n, deadline))

  def _take(self, n: int, deadline: Deadline | None) -> bytes | bytearray:
    if n > _CHUNK // 2:
      return self._take_owned(n, deadline)
    self._fill(n, deadline)
    data = bytes(self._view[self._start : self._start + n])
    self._start += n
    return data

  def _take_owned(self, n: int, deadline: Deadline | None) -> bytearray:
    """Reads `n` bytes into new memory, mostly straight from the kernel.

    (Anonymous maps would skip bytearray's zero-fill, but measured slower:
    malloc reuses freed memory, while a fresh map faults in every page.)
    """
    out = bytearray(n)
    self.read_into(memoryview(out), deadline)
    return out

  def read_into(self, view: memoryview, deadline: Deadline | None) -> None:
    """Fills `view` with the next bytes of the connection: what is read
    already, then straight from the kernel."""
    n = len(view)
    have = min(n, self._end - self._start)
    view[:have] = self._view[self._start : self._start + have]
    self._start += have
    if have < n and bounded_io.recv_all(self._sock, view[have:], deadline, _STALLED) < n - have:
      raise EOFError("connection closed in the middle of a frame")

  def read_bytes(self, n: int, deadline: Deadline | None) -> bytes:
    """The next `n` bytes of the connection."""
    data = self._take(n, deadline)
    return data if type(data) is bytes else bytes(data)

  def _load_streamed(self, size: int, deadline: Deadline | None) -> Any:
    stream = PayloadStream(self, size, deadline)
    loaded = self._load(stream)
    stream.skip_rest()  # what a failed unpickling left: the next frame starts after it
    return loaded

  def _wait(self, deadline: Deadline | None, spin: float) -> None:
    """Reads at least one byte, polling for `spin` seconds first (unless
    polling has not been paying off on this connection)."""
    polled = False
    if spin and self.polling.should_poll():
      if self._poll(deadline, spin):
        return
      polled = True
    view = self._view[self._end :]
    got = bounded_io.recv_into(self._sock, view, deadline, _NO_REPLY, drained=polled)
    if not got:
      raise EOFError("connection closed")
    self._end += got

  def _poll(self, deadline: Deadline | None, spin: float) -> bool:
    """Polls for `spin` seconds (never past the deadline); True if bytes came.

    Bytes that came only after the poll's end (this thread lost its core in
    the meantime) count as a miss, as an empty poll does.
    """
    end = time.monotonic() + spin
    if deadline is not None and deadline.at is not None and deadline.at < end:
      end = deadline.at
    while time.monotonic() < end:
      try:
        got = self._sock.recv_into(self._view[self._end :], 0, socket.MSG_DONTWAIT)
      except BlockingIOError:
        continue
      if not got:
        raise EOFError("connection closed")
      self._end += got
      self.polling.record(time.monotonic() <= end)
      return True
    self.polling.record(False)
    return False

  def _fill(self, n: int, deadline: Deadline | None) -> None:
    if self._end - self._start >= n:
      return
    if self._start + n > len(self._buffer):
      remaining = self._end - self._start
      self._view[:remaining] = self._view[self._start : self._end]
      self._start, self._end = 0, remaining
    while self._end - self._start < n:
      got = bounded_io.recv_into(self._sock, self._view[self._end :], deadline, _STALLED)
      if not got:
        raise EOFError("connection closed")
      self._end += got


class PayloadStream:
  """The pickle of a frame being read, as the file an Unpickler reads.

  `failed` is the error the connection gave, if reading it did fail (then
  the connection is broken, whatever the unpickling says).
  """

  def __init__(self, reader: FrameReader, size: int, deadline: Deadline | None):
    self._reader = reader
    self._deadline = deadline
    self.left = size
    self.failed: BaseException | None = None

  def read(self, n: int = -1) -> bytes:
    n = self.left if n < 0 else min(n, self.left)
    data = self._guarded(self._reader.read_bytes, n)
    self.left -= n
    return data

  def readinto(self, buffer: Any) -> int:
    view = memoryview(buffer).cast("B")
    n = min(len(view), self.left)
    self._guarded(self._reader.read_into, view[:n])
    self.left -= n
    return n

  def readline(self) -> bytes:  # only text opcodes (pickle protocol 0) read lines
    line = bytearray()
    while self.left and not line.endswith(b"\n"):
      line += self.read(1)
    return bytes(line)

  def skip_rest(self) -> None:
    while self.left:
      self.read(min(self.left, _CHUNK // 4))

  def _guarded(self, read: Callable[..., Any], arg: Any) -> Any:
    try:
      return read(arg, self._deadline)
    except BaseException as e:
      self.failed = e
      raise


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


def connect(address: str, deadline: Deadline, tls: TlsConfig | None = None) -> socket.socket:
  """Opens a stream socket to a courier address by `deadline`, with
  TCP_NODELAY where it applies, and TLS over TCP when `tls` is given. The
  socket is left in blocking mode (deadlines bound each use of it)."""
  family, sockaddr = socket_address(address)
  what = f"while connecting to {address}"
  remaining = deadline.remaining()
  if remaining is not None and remaining <= 0:
    raise deadline.error(what)
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.settimeout(remaining)
    try:
      sock.connect(sockaddr)
    except TimeoutError:
      raise deadline.error(what) from None
    sock.settimeout(None)
    if family != socket.AF_UNIX:
      sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      if tls is not None:
        return tls_socket.wrap_client(sock, tls, deadline)
  except BaseException:
    sock.close()
    raise
  return sock


def format_address(host: str, port: int) -> str:
  return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

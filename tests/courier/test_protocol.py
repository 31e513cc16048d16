"""The courier wire protocol: frames, the handshake and addresses."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from launchpad import errors
from launchpad.courier import protocol
from launchpad.timeouts import Deadline

from .conftest import TIMEOUT, in_thread


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
  """A connected (writer, reader) pair of stream sockets."""
  writer, reader = socket.socketpair()
  writer.settimeout(TIMEOUT)  # a blocked send fails instead of hanging
  yield writer, reader
  writer.close()
  reader.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
  """Like `pair`, over loopback TCP."""
  with socket.create_server(("127.0.0.1", 0)) as listener:
    writer = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    listener.settimeout(TIMEOUT)
    reader, _ = listener.accept()
  reader.settimeout(None)
  yield writer, reader
  writer.close()
  reader.close()


def send_in_background(sock, frames) -> object:
  """Sends frames from another thread (they may exceed the socket buffers)."""

  def send():
    try:
      for kind, flags, call_id, payload, buffers in frames:
        protocol.send_frame(sock, kind, flags, call_id, payload, buffers)
    except BaseException:
      sock.shutdown(socket.SHUT_RDWR)  # the reader gets EOF instead of waiting forever
      raise

  return in_thread(send)


def deadline(timeout: float = TIMEOUT) -> Deadline:
  return Deadline(timeout, "reading a test frame")


def read(reader: protocol.FrameReader, **kwargs) -> protocol.Frame:
  return reader.read(deadline=deadline(), **kwargs)


def test_many_frames_in_one_sendall(pair):
  writer, sock = pair
  data = b"".join(
    protocol.HEADER.pack(protocol.REQUEST, i % 2, 0, i, len(p)) + p
    for i, p in ((i, f"payload {i}".encode() * (i % 7)) for i in range(3000))
  )
  sent = in_thread(writer.sendall, data)
  reader = protocol.FrameReader(sock)
  for i in range(3000):
    frame = read(reader)
    assert frame.kind == protocol.REQUEST
    assert frame.flags == i % 2
    assert frame.call_id == i
    assert bytes(frame.payload) == f"payload {i}".encode() * (i % 7)
    assert frame.buffers == []
  sent.result(TIMEOUT)


@pytest.mark.parametrize("spin", [0.0, protocol.SPIN_SECONDS])
def test_large_payloads_and_buffers(tcp_pair, spin):
  writer, sock = tcp_pair
  rng = np.random.default_rng(0)
  big = rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
  array = rng.standard_normal((300, 257))
  sizes = [0, 1, protocol._CHUNK // 2, protocol._CHUNK // 2 + 1, 256 * 1024 + 3]
  frames = [
    (protocol.REPLY, 0, 1, big[: 300 * 1024], []),
    (protocol.REPLY, 0, 2, b"small", [memoryview(big[:5])]),
    (protocol.REQUEST, 1, 3, big[:1000], [memoryview(array), memoryview(big)]),
    *[(protocol.ERROR, 0, 10 + n, big[:n], [memoryview(big[-n:] if n else b"")]) for n in sizes],
    (protocol.REPLY, 0, 99, b"last", []),
  ]
  sent = send_in_background(writer, frames)
  reader = protocol.FrameReader(sock)
  for kind, flags, call_id, payload, buffers in frames:
    frame = read(reader, spin=spin)
    assert (frame.kind, frame.flags, frame.call_id) == (kind, flags, call_id)
    assert bytes(frame.payload) == payload
    assert [bytes(b) for b in frame.buffers] == [bytes(b) for b in buffers]
  sent.result(TIMEOUT)


def test_buffers_arrive_as_writable_memory(pair):
  writer, sock = pair
  array = np.arange(1000, dtype=np.float64)
  sent = send_in_background(writer, [(protocol.REPLY, 0, 1, b"", [memoryview(array)])])
  frame = read(protocol.FrameReader(sock))
  got = np.frombuffer(frame.buffers[0], dtype=np.float64)
  np.testing.assert_array_equal(got, array)
  got[0] = -1.0  # the reader's memory is the caller's to use
  assert got[0] == -1.0
  sent.result(TIMEOUT)


def test_eof_on_closed_peer(pair):
  writer, sock = pair
  writer.close()
  reader = protocol.FrameReader(sock)
  with pytest.raises(EOFError):
    read(reader)
  with pytest.raises(EOFError):
    reader.read(deadline=deadline(), spin=protocol.SPIN_SECONDS)


def test_eof_after_a_whole_frame(pair):
  writer, sock = pair
  protocol.send_frame(writer, protocol.REPLY, 0, 5, b"done", [])
  writer.close()
  reader = protocol.FrameReader(sock)
  assert read(reader).call_id == 5
  with pytest.raises(EOFError):
    read(reader)


@pytest.mark.parametrize("cut", [3, protocol.HEADER.size + 4, protocol.HEADER.size + 8 + 10])
def test_eof_in_the_middle_of_a_frame(pair, cut):
  writer, sock = pair
  header = protocol.HEADER.pack(protocol.REPLY, 0, 1, 7, 100)
  frame = header + (64).to_bytes(8, "little") + b"p" * 100 + b"b" * 64
  writer.sendall(frame[:cut])
  writer.close()
  with pytest.raises(EOFError):
    read(protocol.FrameReader(sock))


def test_eof_in_the_middle_of_a_large_buffer(pair):
  writer, sock = pair
  header = protocol.HEADER.pack(protocol.REPLY, 0, 1, 7, 4)
  frame = header + (1 << 20).to_bytes(8, "little") + b"pppp" + b"b" * (1 << 19)

  def send_then_close():
    writer.sendall(frame)
    writer.shutdown(socket.SHUT_WR)

  sent = in_thread(send_then_close)
  with pytest.raises(EOFError):
    read(protocol.FrameReader(sock))
  sent.result(TIMEOUT)


def test_read_deadline_raises_timeout(pair):
  _, sock = pair
  reader = protocol.FrameReader(sock)
  start = time.monotonic()
  with pytest.raises(errors.CallTimeoutError, match="reading a test frame"):
    reader.read(deadline=deadline(0.05))
  assert time.monotonic() - start < 2


# --- handshake ------------------------------------------------------------------


def handshake(server_secret: bytes, client_secret: bytes):
  server_sock, client_sock = socket.socketpair()
  server_sock.settimeout(TIMEOUT)
  client_sock.settimeout(TIMEOUT)
  try:
    accepted = in_thread(protocol.server_handshake, server_sock, server_secret, deadline())
    try:
      protocol.client_handshake(client_sock, client_secret, "test-address", deadline())
      client_error = None
    except errors.LaunchpadError as e:
      client_error = e
    return accepted.result(TIMEOUT), client_error
  finally:
    server_sock.close()
    client_sock.close()


def test_handshake_with_the_right_secret():
  secret = os.urandom(32)
  assert handshake(secret, secret) == (True, None)


def test_handshake_with_a_wrong_secret():
  accepted, client_error = handshake(b"server secret", b"client secret")
  assert accepted is False
  assert isinstance(client_error, errors.AuthenticationError)
  assert "test-address" in str(client_error)


def test_client_handshake_rejects_a_server_that_is_not_courier():
  ours, theirs = socket.socketpair()
  ours.settimeout(TIMEOUT)
  with ours, theirs:
    theirs.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 40)
    with pytest.raises(errors.ConnectionLostError) as info:
      protocol.client_handshake(ours, b"secret", "somewhere:80", deadline())
  assert "somewhere:80" in str(info.value)


def test_proofs_differ_by_secret_and_nonce():
  nonce = os.urandom(protocol.NONCE_SIZE)
  proof = protocol.proof
  assert len(proof(b"a", nonce, b"client")) == protocol.PROOF_SIZE
  assert proof(b"a", nonce, b"client") == proof(b"a", nonce, b"client")
  assert proof(b"a", nonce, b"client") != proof(b"b", nonce, b"client")
  assert proof(b"a", nonce, b"client") != proof(b"a", os.urandom(protocol.NONCE_SIZE), b"client")
  # A client's proof cannot be replayed as a server's.
  assert proof(b"a", nonce, b"client") != proof(b"a", nonce, b"server")


# --- addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
  "address,expected",
  [
    ("127.0.0.1:8080", (socket.AF_INET, ("127.0.0.1", 8080))),
    ("localhost:1", (socket.AF_INET, ("localhost", 1))),
    ("[::1]:5000", (socket.AF_INET6, ("::1", 5000))),
    ("[fe80::1]:0", (socket.AF_INET6, ("fe80::1", 0))),
    ("unix:@launchpad-abc", (socket.AF_UNIX, "\0launchpad-abc")),
    ("unix:/tmp/lp.sock", (socket.AF_UNIX, "/tmp/lp.sock")),
  ],
)
def test_socket_address_parses(address, expected):
  assert protocol.socket_address(address) == expected


@pytest.mark.parametrize(
  "address", ["", "garbage", "localhost", ":80", "localhost:", "host:http", "host:12ab", "[::1]"]
)
def test_socket_address_rejects_garbage(address):
  with pytest.raises(ValueError):
    protocol.socket_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1:65536", "localhost:99999"])
def test_socket_address_rejects_ports_out_of_range(address):
  with pytest.raises(ValueError):
    protocol.socket_address(address)


@pytest.mark.parametrize("host,port", [("127.0.0.1", 80), ("::1", 9000), ("localhost", 0)])
def test_format_address_round_trips(host, port):
  family, sockaddr = protocol.socket_address(protocol.format_address(host, port))
  assert sockaddr == (host, port)
  assert family == (socket.AF_INET6 if ":" in host else socket.AF_INET)


def test_connect_over_tcp_and_abstract_unix():
  with socket.create_server(("127.0.0.1", 0)) as listener:
    listener.settimeout(TIMEOUT)
    address = protocol.format_address("127.0.0.1", listener.getsockname()[1])
    with protocol.connect(address, deadline()) as sock:
      peer, _ = listener.accept()
      with peer:
        sock.sendall(b"ping")
        peer.settimeout(TIMEOUT)
        assert peer.recv(4) == b"ping"
  name = f"launchpad-test-{os.urandom(6).hex()}"
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
    listener.bind("\0" + name)
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    with protocol.connect(f"unix:@{name}", deadline()) as sock:
      peer, _ = listener.accept()
      with peer:
        sock.sendall(b"pong")
        peer.settimeout(TIMEOUT)
        assert peer.recv(4) == b"pong"

"""Courier calls over TLS: encrypted on the wire, both ends checked."""

from __future__ import annotations

import os
import pickle
import socket
import threading

import numpy as np
import pytest

from launchpad import errors
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from launchpad.tls import TlsConfig

SECRET = os.urandom(32)
PLAINTEXT = b"a recognisable plaintext that must not cross the wire"


class Echo:
  def echo(self, value):
    return value


class Relay:
  """A TCP relay that keeps every byte it forwards, as a sniffer would see them."""

  def __init__(self, target: str):
    host, port = target.rsplit(":", 1)
    self._target = (host, int(port))
    self._listener = socket.create_server(("127.0.0.1", 0))
    self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
    self.seen = bytearray()
    self._lock = threading.Lock()
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return
      server = socket.create_connection(self._target)
      for source, sink in ((client, server), (server, client)):
        threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

  def _pump(self, source: socket.socket, sink: socket.socket) -> None:
    try:
      while data := source.recv(65536):
        with self._lock:
          self.seen += data
        sink.sendall(data)
    except OSError:
      pass
    finally:
      sink.close()

  def close(self) -> None:
    self._listener.close()


@pytest.fixture(scope="module")
def tls():
  return TlsConfig.generate()


@pytest.fixture
def served(tls):
  def start(with_tls: bool):
    server = Server(Echo(), secret=SECRET, tls=tls if with_tls else None)
    server.start()
    servers.append(server)
    relay = Relay(server.address)
    relays.append(relay)
    return relay

  servers, relays = [], []
  yield start
  for relay in relays:
    relay.close()
  for server in servers:
    server.stop()


def test_tls_hides_what_plain_connections_show(served, tls):
  plain, encrypted = served(False), served(True)
  assert Client(plain.address, secret=SECRET, timeout=10).echo(PLAINTEXT) == PLAINTEXT
  assert PLAINTEXT in plain.seen, "the relay sees plain traffic (the test can fail)"
  client = Client(encrypted.address, secret=SECRET, tls=tls, timeout=10)
  assert client.echo(PLAINTEXT) == PLAINTEXT
  array = np.frombuffer(PLAINTEXT * 1000, np.uint8)
  assert np.array_equal(client.echo(array), array)  # out-of-band buffers too
  assert PLAINTEXT not in encrypted.seen


def test_tls_connections_carry_concurrent_calls_and_futures(served, tls):
  client = Client(served(True).address, secret=SECRET, tls=tls, timeout=30)
  futures = [client.futures.echo(i) for i in range(500)]
  failures = []

  def calls():
    try:
      for i in range(200):
        assert client.echo(i) == i
    except Exception as e:  # noqa: BLE001 - reported below
      failures.append(e)

  threads = [threading.Thread(target=calls) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not failures
  assert [f.result(30) for f in futures] == list(range(500))
  big = np.arange(4 << 20, dtype=np.float32)
  assert np.array_equal(client.echo(big), big)


def test_tls_servers_refuse_clients_without_the_certificate(served, tls):
  relay = served(True)
  with pytest.raises(errors.CallTimeoutError, match="CERTIFICATE_VERIFY_FAILED"):
    Client(relay.address, secret=SECRET, tls=TlsConfig.generate(), timeout=5).echo(1)
  with pytest.raises(errors.CallTimeoutError):  # plain: the server never greets it
    Client(relay.address, secret=SECRET, timeout=2).echo(1)
  with pytest.raises(errors.AuthenticationError):  # TLS passes; the secret still counts
    Client(relay.address, secret=os.urandom(32), tls=tls, timeout=5).echo(1)


def test_settings_travel_without_their_ssl_contexts(tls, tmp_path):
  tls.client_context  # noqa: B018 - made and cached
  copy = pickle.loads(pickle.dumps(tls))
  assert copy == tls and "client_context" not in copy.__dict__
  tls.write(tmp_path)
  assert TlsConfig.read(tmp_path) == tls
  assert all((tmp_path / f"tls-{n}.pem").stat().st_mode & 0o077 == 0 for n in ("cert", "key"))
  assert TlsConfig.read(tmp_path / "elsewhere") is None

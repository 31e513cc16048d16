"""A publisher's spare memfd (broadcast/spare.py), with a real broadcast
service and courier server in this process: the next publish writes into
the pages allocated after the last one, a publish of another size still
works, and no spare is left once the node has closed or the client goes."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import launchpad as lp
from launchpad import memfd
from launchpad.broadcast.client import BroadcastClient
from launchpad.broadcast.service import BroadcastService
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from tests.waits import wait_until

TIMEOUT = 60.0
NODE = "params[0]"
MEMFD = "/memfd:launchpad-broadcast"
MB = 1 << 20


def broadcast_memfds() -> dict[int, tuple[bool, bool]]:
  """inode -> (sealed, all its pages allocated), of the broadcast memfds
  this process has descriptors of."""
  found = {}
  for name in os.listdir("/proc/self/fd"):
    try:
      if os.readlink(f"/proc/self/fd/{name}").startswith(MEMFD):
        stat = os.fstat(int(name))
        # A file just created has no size yet, so no pages to lack.
        full = 0 < stat.st_size <= stat.st_blocks * 512
        found[stat.st_ino] = (memfd.is_sealed(int(name)), full)
    except OSError:
      pass  # the listing's own descriptor, or one closed meanwhile
  return found


def spares() -> set[int]:
  """The unsealed broadcast memfds: spares, allocated or being allocated."""
  return {inode for inode, (sealed, _) in broadcast_memfds().items() if not sealed}


def wait_for_spare() -> int:
  """The inode of the one spare, once its pages are allocated."""

  allocated: list[int] = []

  def one_allocated() -> bool:
    allocated[:] = [i for i, (sealed, full) in broadcast_memfds().items() if not sealed and full]
    return len(allocated) > 0

  wait_until(one_allocated, "a spare's allocation")
  (inode,) = allocated
  return inode


def wait_for_no_spare() -> None:
  """A spare released while its allocation ends is closed as it ends."""
  wait_until(lambda: spares() == set(), "the spare's release")


@pytest.fixture
def node() -> Iterator[tuple[BroadcastService, Callable[[], BroadcastClient]]]:
  """The node's service, and a function that makes a client of it."""
  secret = os.urandom(32)
  service = BroadcastService(NODE, secret)
  server = Server(service, secret=secret, label=NODE)
  address = server.start()
  courier = Client(address, secret=secret, label=NODE, timeout=TIMEOUT)
  clients = []  # weak references: a test may drop a client to see it collected

  def connect() -> BroadcastClient:
    client = BroadcastClient(courier, secret, NODE)
    clients.append(weakref.ref(client))
    return client

  try:
    yield service, connect
  finally:
    for ref in clients:
      if (client := ref()) is not None:
        client.close()
    courier.close()
    service.close()
    server.stop()


def params(version: int, size: int) -> dict:
  return {"w": np.full(size // 4, version, np.float32), "step": version}


def publisher_with_spare(connect: Callable[[], BroadcastClient]) -> BroadcastClient:
  """A new client that published version 1 (1 MB), once its spare is allocated."""
  client = connect()
  client.publish(params(1, MB), timeout=TIMEOUT)
  wait_for_spare()
  return client


def check(reader: BroadcastClient, version: int, size: int) -> None:
  got, read = reader.latest(version, timeout=TIMEOUT)
  assert got == version
  assert read["step"] == version
  assert read["w"].nbytes == size // 4 * 4
  assert float(read["w"].min()) == float(read["w"].max()) == version


def test_the_next_publish_writes_into_the_spare_and_other_sizes_still_work(node):
  service, connect = node
  client = connect()
  before = set(broadcast_memfds())
  assert client.publish(params(1, 4 * MB), timeout=TIMEOUT) == 1
  first = wait_for_spare()
  assert first not in before
  assert client.publish(params(2, 4 * MB), timeout=TIMEOUT) == 2
  # The node holds the spare's file, sealed, as version 2; a new spare follows.
  assert broadcast_memfds()[first][0], "the spare, sealed"
  check(client, 2, 4 * MB)
  second = wait_for_spare()
  assert second != first
  for version, size in ((3, 6 * MB), (4, 2 * MB), (5, 2 * MB)):
    assert client.publish(params(version, size), timeout=TIMEOUT) == version
    check(client, version, size)
  assert service.live_versions() == 2


def test_no_spare_is_left_once_the_node_closed(node):
  service, connect = node
  client = publisher_with_spare(connect)
  service.close()
  # The publish takes the spare and prepares none: the node is gone (its
  # connection was shut, or it answered that it stopped).
  with pytest.raises((lp.ProgramStoppedError, lp.ConnectionLostError), match=r"params\[0\]"):
    client.publish(params(2, MB), timeout=TIMEOUT)
  assert broadcast_memfds() == {}


def test_a_closed_or_collected_client_leaves_no_spare(node):
  _, connect = node
  client = publisher_with_spare(connect)
  client.close()
  wait_for_no_spare()
  client.publish(params(2, MB), timeout=TIMEOUT)  # still usable, and prepares again
  wait_for_spare()
  other = connect()
  other.publish(params(3, MB), timeout=TIMEOUT)
  wait_until(lambda: len(spares()) == 2, "the second client's spare")
  del other
  gc.collect()
  wait_until(lambda: len(spares()) == 1, "the collected client's spare closed")

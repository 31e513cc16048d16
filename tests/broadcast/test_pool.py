"""A publisher's version files (broadcast/pool.py), with a real broadcast
service and courier server in this process: versions are written into the
files no one holds, never into one a reader holds; a file of another size
is dropped once free; nothing is left once the node has closed or the
client goes; the node refuses a file that could change size or is still
being written."""

from __future__ import annotations

import fcntl
import gc
import os
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import launchpad as lp
from launchpad import errors
from launchpad.broadcast import layout, pool
from launchpad.broadcast.client import BroadcastClient
from launchpad.broadcast.service import BroadcastService
from launchpad.courier.client import Client
from launchpad.courier.server import Server

TIMEOUT = 60.0
NODE = "params[0]"
MEMFD = "/memfd:launchpad-broadcast"
MB = 1 << 20


def broadcast_files(writable_only: bool = False) -> dict[int, int]:
  """inode -> size of the broadcast memfds this process has descriptors of
  (only those opened for writing, a publisher's, if `writable_only`)."""
  found = {}
  for name in os.listdir("/proc/self/fd"):
    try:
      if not os.readlink(f"/proc/self/fd/{name}").startswith(MEMFD):
        continue
      writable = fcntl.fcntl(int(name), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
      if writable or not writable_only:
        stat = os.fstat(int(name))
        found[stat.st_ino] = stat.st_size
    except OSError:
      pass  # the listing's own descriptor, or one closed meanwhile
  return found


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


def check(reader: BroadcastClient, version: int, size: int) -> dict:
  got, read = reader.latest(version, timeout=TIMEOUT)
  assert got == version
  assert read["step"] == version
  assert read["w"].nbytes == size // 4 * 4
  assert float(read["w"].min()) == float(read["w"].max()) == version
  return read


def test_versions_are_written_into_the_files_no_one_holds(node):
  _, connect = node
  publisher, reader = connect(), connect()
  seen = set()
  for version in range(1, 9):
    assert publisher.publish(params(version, MB), timeout=TIMEOUT) == version
    check(reader, version, MB)
    seen |= set(broadcast_files(writable_only=True))
  # The node holds the newest two, the reader the newest: a third file is
  # enough, and each is written again.
  assert len(seen) == 3, f"files written for 8 versions: {len(seen)}"


def test_a_version_a_reader_holds_is_never_written(node):
  _, connect = node
  publisher, holder, reader = connect(), connect(), connect()
  publisher.publish(params(1, MB), timeout=TIMEOUT)
  held = check(holder, 1, MB)["w"]
  holder.close()  # its connection goes; the arrays it returned stay
  del holder
  gc.collect()
  for version in range(2, 12):
    publisher.publish(params(version, MB), timeout=TIMEOUT)
    check(reader, version, MB)
    assert float(held.min()) == float(held.max()) == 1.0
  # The held file was left out of the pool's rotation, then dropped from it
  # (at most MAX_FILES are kept); its pages live as long as the arrays.
  assert len(broadcast_files(writable_only=True)) <= pool.MAX_FILES


def test_a_file_of_another_size_is_dropped_once_free(node):
  _, connect = node
  publisher, reader = connect(), connect()
  for version in (1, 2, 3):
    publisher.publish(params(version, 4 * MB), timeout=TIMEOUT)
    check(reader, version, 4 * MB)
  for version in (4, 5, 6, 7):
    publisher.publish(params(version, 2 * MB), timeout=TIMEOUT)
    check(reader, version, 2 * MB)
  sizes = set(broadcast_files().values())
  assert len(sizes) == 1 and sizes.pop() < 4 * MB, "the 4 MB files, free, were dropped"


def test_no_file_is_left_once_the_node_closed(node):
  service, connect = node
  client = connect()
  client.publish(params(1, MB), timeout=TIMEOUT)
  assert broadcast_files(writable_only=True)
  service.close()
  # The node is gone (its connection was shut, or it answered that it
  # stopped): the publish drops the publisher's files.
  with pytest.raises((lp.ProgramStoppedError, lp.ConnectionLostError), match=r"params\[0\]"):
    client.publish(params(2, MB), timeout=TIMEOUT)
  assert broadcast_files() == {}


def test_a_closed_or_collected_client_leaves_no_file(node):
  _, connect = node
  client = connect()
  client.publish(params(1, MB), timeout=TIMEOUT)
  client.close()
  assert broadcast_files(writable_only=True) == {}
  client.publish(params(2, MB), timeout=TIMEOUT)  # still usable, and makes files again
  assert len(broadcast_files(writable_only=True)) == 1
  other = connect()
  other.publish(params(3, MB), timeout=TIMEOUT)
  assert len(broadcast_files(writable_only=True)) == 2
  del other
  gc.collect()
  assert len(broadcast_files(writable_only=True)) == 1


def version_file(size: int) -> pool.VersionFile:
  """A written version file, still locked for writing."""
  return layout.write(params(1, size), NODE, lambda n: pool.VersionFile(layout.MEMFD_NAME, n))


def test_the_node_refuses_a_file_that_can_change_size_or_is_still_written():
  file = version_file(MB)
  try:
    with pytest.raises(errors.LaunchpadError, match=r"params\[0\].*still writing"):
      layout.hold(file.fd, NODE)
    file.unlock()
    held = layout.hold(file.fd, NODE)
    assert not file.lock(), "a held file cannot be written"
    os.close(held)
    assert file.lock()
  finally:
    file.close()
  loose = os.memfd_create("launchpad-broadcast", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
  try:
    os.ftruncate(loose, MB)
    with pytest.raises(errors.LaunchpadError, match=r"params\[0\].*not sealed against resizing"):
      layout.hold(loose, NODE)
  finally:
    os.close(loose)

"""The broadcast node's versions (service.Versions) with real version files:
the node keeps the newest and the one before it, and hands the one before
that back to be closed, so that the node, not the reader that drops it
last, frees a version's memory; closing the node closes both."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from launchpad.broadcast import layout, wire
from launchpad.broadcast.pool import VersionFile
from launchpad.broadcast.service import Versions

NODE = "params[0]"


def version_file(step: int) -> int:
  """A held descriptor of a new version file (the node's, as layout.hold gives it)."""
  params = {"w": np.full(16, step, np.float32), "step": step}
  file = layout.write(params, NODE, lambda size: VersionFile(layout.MEMFD_NAME, size))
  file.unlock()
  try:
    return layout.hold(file.fd, NODE)
  finally:
    file.close()


def inode(fd: int) -> int:
  return os.fstat(fd).st_ino


def is_open(fd: int, ino: int) -> bool:
  """Whether `fd` is still the file of inode `ino` (the number may be reused)."""
  try:
    return inode(fd) == ino
  except OSError as e:
    assert e.errno == errno.EBADF
    return False


def test_the_version_two_before_the_newest_is_handed_back_to_be_closed():
  versions = Versions(NODE)
  first, second, third = (version_file(step) for step in (1, 2, 3))
  inodes = {fd: inode(fd) for fd in (second, third)}
  assert versions.put(first) == (1, None)
  assert versions.live() == 1
  assert versions.put(second) == (2, None)
  assert versions.live() == 2
  assert versions.put(third) == (3, first)  # the caller closes it, after its reply
  os.close(first)
  assert versions.live() == 2
  status, version, fd = versions.get(3, timeout=0)
  assert (status, version) == (wire.OK, 3)
  try:
    assert inode(fd) == inodes[third]
  finally:
    os.close(fd)
  versions.close()
  assert not is_open(second, inodes[second]) and not is_open(third, inodes[third])
  assert versions.live() == 0


def test_a_put_after_close_is_refused_and_its_file_closed():
  versions = Versions(NODE)
  versions.close()
  late = version_file(1)
  ino = inode(late)
  assert versions.put(late) == (0, None)
  assert not is_open(late, ino)
  assert versions.get(1, timeout=0)[0] == wire.CLOSED


@pytest.mark.parametrize("count", [1, 2])
def test_close_leaves_no_descriptor_of_a_version(count):
  versions = Versions(NODE)
  files = {fd: inode(fd) for fd in (version_file(step) for step in range(1, count + 1))}
  for fd in files:
    versions.put(fd)
  versions.close()
  assert [is_open(fd, ino) for fd, ino in files.items()] == [False] * count

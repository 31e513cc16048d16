"""A broadcast node's descriptor socket keeps accepting once its process ran
out of file descriptors: a flood of idle connections (real sockets, another
process's listener) is shed, and a reader that comes after it is served."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from launchpad.broadcast import wire
from launchpad.broadcast.service import BroadcastService
from launchpad.courier import protocol
from launchpad.timeouts import Deadline
from tests.crowded import crowded_child, limit_descriptors

TIMEOUT = 60.0
NODE = "params[0]"


def serve_with_few_descriptors(pipe, secret: bytes, spare: int) -> None:
  """Child process: a broadcast service holding version 1, which may open
  only `spare` more descriptors."""
  service = BroadcastService(NODE, secret)
  service.publish({"w": np.arange(4)})
  limit_descriptors(spare)
  pipe.send(service.fd_address)
  try:
    while pipe.recv() == "shed":
      pipe.send(service.shed)
  except EOFError:
    pass


@pytest.fixture
def crowded_service() -> Iterator[tuple[str, bytes, object, int]]:
  secret = os.urandom(32)
  with crowded_child(
    serve_with_few_descriptors, secret, 40, timeout=TIMEOUT, what="crowded broadcast service"
  ) as (pipe, pid):
    yield pipe.recv(), secret, pipe, pid


def newest_version(address: str, secret: bytes) -> int:
  """The version a reader gets over the descriptor socket (its fd closed)."""
  deadline = Deadline(TIMEOUT, f"a reader of {NODE}")
  sock = protocol.connect(address, deadline)
  try:
    protocol.client_handshake(sock, secret, address, deadline)
    wire.send(sock, wire.REQUEST.pack(wire.GET, 0, 1, 0))
    data, fd = wire.receive(sock, wire.REPLY.size, deadline, "waiting for the reply")
  finally:
    sock.close()
  if fd is not None:
    os.close(fd)
  status, version = wire.REPLY.unpack(data)
  assert status == wire.OK
  return version


def wait_for(condition: Callable[[], bool], what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert time.monotonic() < deadline, what
    time.sleep(0.01)


def shed(pipe) -> int:
  pipe.send("shed")
  assert pipe.poll(TIMEOUT)
  return pipe.recv()


def test_descriptor_socket_survives_running_out_of_descriptors(crowded_service):
  address, secret, pipe, pid = crowded_service
  _, sockaddr = protocol.socket_address(address)

  def descriptors() -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))

  before = descriptors()
  flood = []
  try:
    # Idle connections, more than the service has descriptors for and fewer
    # than its listen backlog (connecting never waits for an accept).
    for _ in range(100):
      sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      flood.append(sock)
      sock.connect(sockaddr)
    wait_for(lambda: shed(pipe) > 0, "the flood never exhausted the service's descriptors")
  finally:
    for sock in flood:
      sock.close()
  # Once the service closed its ends of the flood, serving a reader needs no
  # descriptor its limit lacks (the reply carries a duplicate of the version's).
  wait_for(lambda: descriptors() <= before, "the service kept its ends of the flood")
  assert newest_version(address, secret) == 1

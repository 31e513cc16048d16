"""Readers poll before they block only while polling pays, and not at all with
LAUNCHPAD_COURIER_SPIN=0; calls work either way.

Misses are made certain, not raced: the peer never writes during the poll
(nothing is written at all, and the read ends at its deadline).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from launchpad import errors
from launchpad.courier import protocol
from launchpad.timeouts import Deadline

from .conftest import TIMEOUT


def test_polling_backs_off_after_misses_and_starts_over_after_a_hit():
  polling = protocol.Polling()
  assert polling.should_poll()
  skipped = []
  for _ in range(12):  # misses only: polls come further and further apart
    polling.record(False)
    run = 0
    while not polling.should_poll():
      run += 1
    skipped.append(run)
  assert skipped[0] == 0  # one miss alone changes nothing
  assert skipped[1:6] == [1, 2, 4, 8, 16]
  assert max(skipped) <= protocol.MAX_SPIN_SKIPS
  polling.record(True)
  polling.record(False)
  assert polling.should_poll()  # a hit started over: one miss skips nothing


def test_polling_is_capped():
  polling = protocol.Polling()
  for _ in range(40):
    polling.record(False)
    while not polling.should_poll():
      pass
  polling.record(False)
  skipped = 0
  while not polling.should_poll():
    skipped += 1
  assert skipped == protocol.MAX_SPIN_SKIPS


def test_reader_counts_empty_polls_as_misses_and_then_blocks_without_polling():
  a, b = socket.socketpair()
  try:
    reader = protocol.FrameReader(a)
    for _ in range(protocol.MAX_SPIN_MISSES):  # nothing ever comes: each poll misses
      with pytest.raises(errors.CallTimeoutError):
        reader.read(Deadline(0.05, "read", "nothing is sent"), spin=1e-4)
    assert not reader.polling.should_poll()  # the next read blocks at once
    b.sendall(protocol.HEADER.pack(protocol.REPLY, 0, 0, 7, 3) + b"abc")
    frame = reader.read(Deadline(TIMEOUT, "read", "a frame was sent"), spin=1e-4)
    assert (frame.call_id, frame.payload) == (7, b"abc")
  finally:
    a.close()
    b.close()


CHILD = """
import os
from launchpad.courier import protocol
from launchpad.courier.client import Client
from launchpad.courier.server import Server


class Echo:
  def ping(self, x):
    return x


assert not protocol.Polling().should_poll()
server = Server(Echo(), secret=b"s" * 32, label="echo[0]")
server.start()
for address in (server.local_address, server.address):
  client = Client(address, secret=b"s" * 32, label="echo[0]", timeout=%(timeout)r)
  assert [client.ping(i) for i in range(50)] == list(range(50))
  futures = [client.futures.ping(i) for i in range(50)]
  assert [f.result(%(timeout)r) for f in futures] == list(range(50))
  client.close()
server.stop()
print("calls without polling: ok")
"""


@pytest.mark.parametrize("value, polls", [("0", False), ("1", True)])
def test_spin_setting_reaches_readers_and_calls_work(value, polls):
  env = dict(os.environ, LAUNCHPAD_COURIER_SPIN=value)
  check = "from launchpad.courier import protocol; print(protocol.Polling().should_poll())"
  out = subprocess.run(
    [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=4 * TIMEOUT
  )  # an interpreter's start and imports, which a loaded machine can make take seconds
  assert out.stdout.strip() == str(polls), out.stderr
  if not polls:
    done = subprocess.run(
      [sys.executable, "-c", CHILD % {"timeout": TIMEOUT}],
      env=env,
      capture_output=True,
      text=True,
      timeout=4 * TIMEOUT,
    )
    assert "calls without polling: ok" in done.stdout, done.stderr

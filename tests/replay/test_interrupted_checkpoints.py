"""Interrupted checkpoints: the temporary files a crash leaves are removed, live ones are not."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from child_process import Child

from launchpad import replay
from launchpad.replay import checkpoint as ckpt

TIMEOUT = 30.0  # bound on every wait
BIG = 64 << 20  # bytes of one item: writing a checkpoint of it takes a while
ATTEMPTS = 5  # checkpoints tried until one is caught mid-write (the first nearly always is)

SERVER = """
import sys
from launchpad import replay
server = replay.Server([replay.Table.queue("q", 100)], checkpoint_dir=sys.argv[1])
print("serving", server.address, server.secret.hex(), server.restored_from, flush=True)
sys.stdin.read()  # until the test closes stdin
server.stop()
"""


def temp_files(directory: str) -> list[str]:
  return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def start(directory: str) -> tuple[Child, replay.Client, str]:
  """A server process on `directory`: (its process, a client, the checkpoint it restored)."""
  child = Child([sys.executable, "-c", SERVER, directory], timeout=TIMEOUT, stdin=subprocess.PIPE)
  [match] = child.wait_for(re.compile(r"serving (\S+) (\S+) (\S+)$"))
  client = replay.Client(match[1], secret=bytes.fromhex(match[2]), timeout=TIMEOUT)
  return child, client, match[3]


def checkpoint_and_kill(child: Child, client: replay.Client, directory: str) -> bool:
  """Starts a checkpoint and SIGKILLs the server once its temporary file exists.

  True if the kill came while the file was being written (it is left, and
  no new checkpoint); False if the checkpoint was complete first.
  """
  before = ckpt.list_checkpoints(directory)
  done = threading.Event()

  def call() -> None:
    try:
      client.checkpoint(timeout=TIMEOUT)
    except Exception:  # noqa: BLE001 - the kill cuts the call short
      pass
    done.set()

  threading.Thread(target=call, daemon=True).start()
  deadline = time.monotonic() + TIMEOUT
  while not temp_files(directory) and not done.is_set():
    assert time.monotonic() < deadline, "the checkpoint neither started nor ended"
    threading.Event().wait(0.0005)
  os.kill(child.pid, signal.SIGKILL)
  child.kill()  # waits for it
  assert child.process.returncode == -signal.SIGKILL
  assert done.wait(TIMEOUT)
  return bool(temp_files(directory)) and ckpt.list_checkpoints(directory) == before


def test_a_server_killed_mid_checkpoint_leaves_nothing_once_restarted(tmp_path):
  directory = str(tmp_path / "ckpt")
  child, client, _ = start(directory)
  try:
    client.insert({"blob": np.ones(BIG, np.uint8)}, {"q": 1.0})
    client.insert({"step": np.int64(0)}, {"q": 1.0})
    complete, expected = client.checkpoint(), [0]
    for attempt in range(1, ATTEMPTS + 1):
      client.insert({"step": np.int64(attempt)}, {"q": 1.0})  # not in `complete`
      if checkpoint_and_kill(child, client, directory):
        break
      # The checkpoint was complete before the kill: it holds this step too. Again.
      complete = ckpt.list_checkpoints(directory)[0]
      expected.append(attempt)
      child, client, restored = start(directory)
      assert restored == complete
    else:
      pytest.fail(f"no checkpoint of {ATTEMPTS} was caught while being written")
    [left] = temp_files(directory)
    assert left.startswith(f".{len(expected) + 1:012d}.")  # the interrupted one

    child, client, restored = start(directory)
    assert restored == complete
    assert temp_files(directory) == []  # removed when the server started
    path = client.checkpoint()
    assert temp_files(directory) == [] and ckpt.list_checkpoints(directory)[0] == path
    # What the server serves is the last complete checkpoint's: the bulk, then the steps.
    [bulk] = client.sample("q")
    assert bulk.data["blob"].shape == (BIG,)
    steps = [int(s.data["step"]) for s in client.sample("q", len(expected))]
    assert steps == expected
    assert client.server_info()["q"]["size"] == 0
    child.process.stdin.close()
    assert child.finish() == 0, child.output()
  finally:
    child.kill()


def held_temp_file(directory: str, counter: int) -> int:
  """A temporary file named as a checkpoint's, flocked as its writer holds it: the open fd."""
  fd, _ = tempfile.mkstemp(prefix=f".{counter:012d}.", suffix=".tmp", dir=directory)
  fcntl.flock(fd, fcntl.LOCK_EX)
  os.write(fd, b"half a checkpoint")
  return fd


def test_only_temp_files_that_no_writer_holds_are_removed(tmp_path):
  directory = str(tmp_path)
  fd = held_temp_file(directory, 7)
  [held] = temp_files(directory)
  others = ["notes.tmp", ".x.tmp", "000000000001.ckpt", ".000000000002.ckpt"]
  for name in others:
    (tmp_path / name).write_bytes(b"not a checkpoint's temporary file")
  assert ckpt.remove_stale_temp_files(directory) == []
  os.close(fd)  # the writer is gone: its file is stale
  assert ckpt.remove_stale_temp_files(directory) == [os.path.join(directory, held)]
  assert sorted(os.listdir(directory)) == sorted(others)


def test_a_checkpoint_removes_the_leftovers_of_interrupted_ones_but_not_a_live_write(tmp_path):
  directory = tmp_path / "ckpt"
  with replay.Server([replay.Table.queue("q", 10)], checkpoint_dir=str(directory)) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    client.insert({"x": np.float32(1)}, {"q": 1.0})
    client.checkpoint()
    # Left by crashed writers (one named as before writers locked their files), and one live.
    stale = [directory / ".000000000001.k2j3h4g5.tmp", directory / ".000000000002.abc_1234.tmp"]
    for path in stale:
      path.write_bytes(b"x" * 1000)
    fd = held_temp_file(str(directory), 2)
    try:
      [live] = [n for n in temp_files(str(directory)) if n not in {p.name for p in stale}]
      path = client.checkpoint()
      assert temp_files(str(directory)) == [live]
      assert ckpt.list_checkpoints(str(directory))[0] == path
    finally:
      os.close(fd)
    client.checkpoint()
    assert temp_files(str(directory)) == []

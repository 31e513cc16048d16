"""lp.BroadcastNode with real processes (local_mp): a learner publishes, actors
read; one read-only copy per host, shared through a memfd; the
cross-host path through courier; timeouts, SIGKILLs and held versions."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import psutil
import pytest

import launchpad as lp
from tests.launching import launching
from tests.shm_names import shm_names
from tests.waits import wait_until

TIMEOUT = 60.0
MB = 1 << 20
MEMFD = "/memfd:launchpad-broadcast"

launched = launching(launch_type="local_mp", terminal="output_to_files", grace_period=2.0)


def make_params(version: int, size: int) -> dict:
  """Parameters of `size` bytes in all, every element equal to `version`."""
  return {
    "policy": {"w": np.full(size // 8, version, np.float32), "b": np.full(7, version, np.int64)},
    "critic": [np.full((size // 8, 3), version, np.float32)],
    "step": version,
  }


class Learner:
  """Publishes versions when told to, or in a loop of its own."""

  def __init__(self, params):
    self._params = params
    self._looping = threading.Event()

  def publish(self, version: int, size: int) -> int:
    return self._params.publish(make_params(version, size), timeout=TIMEOUT)

  def publish_forever(self, size: int) -> None:
    def loop() -> None:
      for version in range(10**6):
        self._params.publish(make_params(version, size), timeout=TIMEOUT)
        self._looping.set()

    threading.Thread(target=loop, daemon=True).start()
    self._looping.wait(TIMEOUT)

  def pid(self) -> int:
    return os.getpid()


def _base(array: np.ndarray):
  while isinstance(array, np.ndarray):
    array = array.base
  return array


class Actor:
  """Reads versions and reports what it sees; can hold one and drop it."""

  def __init__(self, params):
    self._params = params
    self.held = None
    self._reads = 0

  def read(self, min_version: int) -> dict:
    version, params = self._params.latest(min_version, timeout=TIMEOUT)
    arrays = [params["policy"]["w"], params["policy"]["b"], params["critic"][0]]
    bases = [_base(a) for a in arrays]
    self.held = params
    return {
      "version": version,
      "step": params["step"],
      "values": sorted({float(a.min()) for a in arrays} | {float(a.max()) for a in arrays}),
      "sizes": [a.nbytes for a in arrays],
      "read_only": [not a.flags.writeable for a in arrays],
      "mapped": [isinstance(b, memoryview) and type(b.obj).__name__ == "mmap" for b in bases],
    }

  def drop(self) -> None:
    self.held = None

  def held_values(self) -> list[float]:
    arrays = [self.held["policy"]["w"], self.held["policy"]["b"], self.held["critic"][0]]
    return sorted({float(a.min()) for a in arrays} | {float(a.max()) for a in arrays})

  def memfd_inodes(self) -> list[int]:
    return mapped_memfds(os.getpid())

  def pss(self) -> int:
    return psutil.Process().memory_full_info().pss

  def read_forever(self) -> None:
    def loop() -> None:
      version = 0
      for _ in range(10**6):
        version, params = self._params.latest(version + 1, timeout=TIMEOUT)
        float(params["critic"][0].sum())
        self._reads += 1

    threading.Thread(target=loop, daemon=True).start()

  def reads(self) -> int:
    return self._reads

  def pid(self) -> int:
    return os.getpid()


def mapped_memfds(pid: int) -> list[int]:
  """Inodes of the broadcast memfds that process `pid` maps."""
  with open(f"/proc/{pid}/maps") as f:
    return sorted({int(line.split()[4]) for line in f if MEMFD in line})


def held_memfds(pid: int) -> list[int]:
  """Inodes of the broadcast memfds that process `pid` has descriptors of."""
  inodes = []
  for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
      if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD):
        inodes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
    except OSError:
      pass  # closed meanwhile
  return inodes


def memfd_holders() -> dict[int, list[int]]:
  """pid -> memfd inodes it holds or maps, for this test's process tree."""
  found = {}
  for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
      inodes = held_memfds(proc.pid) + mapped_memfds(proc.pid)
    except OSError:
      continue
    if inodes:
      found[proc.pid] = inodes
  return found


def build(actors: int, actor_resources=None, restart: str = "never"):
  program = lp.Program("broadcast")
  params = program.add_node(lp.BroadcastNode(), label="params")
  learner = program.add_node(lp.CourierNode(Learner, params), label="learner", restart=restart)
  handles = [
    program.add_node(lp.CourierNode(Actor, params), label="actor", restart=restart)
    for _ in range(actors)
  ]
  resources = {"local_resources": {"actor": actor_resources}} if actor_resources else {}
  return program, params, learner, handles, resources


def expected(version: int, size: int) -> dict:
  return {
    "version": version,
    "step": version,
    "values": [float(version)],
    "sizes": [size // 8 * 4, 56, size // 8 * 12],
    "read_only": [True, True, True],
  }


def test_actors_in_processes_share_one_read_only_copy(launched):
  size = 64 * MB
  program, params, learner, actors, resources = build(4)
  launched(program, **resources)
  learner_client = learner.dereference()
  actor_clients = [a.dereference() for a in actors]
  before = [a.pss() for a in actor_clients]
  for version in (1, 2, 3):
    assert learner_client.publish(version, size) == version
    for actor in actor_clients:
      seen = actor.read(version)
      assert seen.pop("mapped") == [True, True, True], "arrays must be views of the mapping"
      assert seen == expected(version, size)
  grown = sum(a.pss() - b for a, b in zip(actor_clients, before, strict=True))
  # Four private copies would be 4x; shared pages count once across readers.
  assert grown < 2 * size + 16 * MB, f"the 4 readers' PSS grew by {grown / MB:.0f} MB"
  assert params.dereference().live_versions() == 2  # the newest, and the one before it


def test_waiting_for_a_newer_version_times_out_naming_the_node(launched):
  program, params, learner, _, _ = build(0)
  launched(program)
  learner.dereference().publish(1, MB)
  client = params.dereference()
  assert client.latest(timeout=TIMEOUT)[0] == 1
  with pytest.raises(lp.CallTimeoutError, match=r"broadcast params\[0\].*no version >= 2"):
    client.wait_newer(1, timeout=0.2)
  with pytest.raises(ValueError, match="timeout"):
    client.latest(timeout=-1)


def holding_version_1(launched, restart: str = "never"):
  """A learner and two actors, launched; the first actor read version 1 and
  holds it: (params, learner, holder, other, the inode of version 1's file)."""
  program, params, learner, actors, _ = build(2, restart=restart)
  launched(program)
  learner_client = learner.dereference()
  holder, other = (a.dereference() for a in actors)
  learner_client.publish(1, MB)
  holder.read(1)
  (first,) = holder.memfd_inodes()
  return params, learner_client, holder, other, first


def test_a_held_version_is_not_written_again_until_its_reader_drops_it(launched):
  params, learner_client, holder, other, first = holding_version_1(launched)
  for version in (2, 3):
    learner_client.publish(version, MB)
    assert other.read(version)["version"] == version
  # The node moved on (it keeps the newest and the one before); the holder
  # still maps version 1, unchanged, and only the learner keeps its file too.
  assert params.dereference().live_versions() == 2
  assert holder.memfd_inodes() == [first]
  assert holder.held_values() == [1.0]
  holders = memfd_holders()
  assert sorted(pid for pid, inodes in holders.items() if first in inodes) == sorted(
    [holder.pid(), learner_client.pid()]
  )
  holder.drop()
  assert holder.read(3)["version"] == 3  # its client moves on too
  assert first not in holder.memfd_inodes()
  # Free now: the learner writes version 4 into it.
  learner_client.publish(4, MB)
  assert other.read(4)["values"] == [4.0]
  assert other.memfd_inodes() == [first]


def test_the_version_a_sigkilled_reader_held_is_written_again(launched):
  # Restarted, so that the kill does not stop the program.
  _, learner_client, holder, other, first = holding_version_1(launched, restart="on-failure")
  holder_pid = holder.pid()
  os.kill(holder_pid, signal.SIGKILL)
  wait_until(lambda: not psutil.pid_exists(holder_pid), "the holder's end")
  # Its lock went with it: once the node retires version 1 (two newer ones
  # exist), the learner writes version 4 into its file.
  for version in (2, 3, 4):
    learner_client.publish(version, MB)
  assert other.read(4)["values"] == [4.0]
  assert other.memfd_inodes() == [first]


def test_cross_host_actors_get_the_same_values_through_courier(launched):
  size = 4 * MB
  program, _, learner, actors, resources = build(
    2, lp.PythonProcess(env={"LAUNCHPAD_HOST": "127.0.0.2"})
  )
  launched(program, **resources)
  learner_client = learner.dereference()
  for version in (1, 2):
    learner_client.publish(version, size)
    for actor in actors:
      seen = actor.dereference().read(version)
      assert seen.pop("mapped") == [False, False, False], "a copy, not the node's mapping"
      assert seen == {**expected(version, size), "read_only": seen["read_only"]}
      assert actor.dereference().memfd_inodes() == []


def node_fds(pid: int) -> int:
  return psutil.Process(pid).num_fds()


def broadcast_pid(publisher: int) -> int:
  """The one process of the program but the `publisher` (which maps the
  files it holds) that holds a broadcast memfd open without mapping it (a
  reader's mapping keeps a descriptor of its own: Python's mmap duplicates
  the one it maps)."""
  pids = [
    p
    for p in psutil.Process().children(recursive=True)
    if p.pid != publisher and set(held_memfds(p.pid)) - set(mapped_memfds(p.pid))
  ]
  assert len(pids) == 1, f"processes holding a broadcast memfd they do not map: {pids}"
  return pids[0].pid


def test_sigkill_of_a_reader_and_of_the_publisher_leaks_nothing(launched):
  shm = shm_names()
  # Restarted, so that the kills do not stop the program.
  program, params, learner, actors, _ = build(2, restart="on-failure")
  launched(program)
  learner_client = learner.dereference()
  learner_client.publish(1, 8 * MB)
  reader, survivor = (a.dereference() for a in actors)
  survivor.read(1)
  node = broadcast_pid(learner_client.pid())
  fds_before = node_fds(node)
  learner_client.publish_forever(8 * MB)
  reader.read_forever()
  wait_until(lambda: reader.reads() >= 3, "3 reads while the learner publishes")
  os.kill(reader.pid(), signal.SIGKILL)
  os.kill(learner_client.pid(), signal.SIGKILL)
  # The survivor still reads; the node is back to one memfd and its own fds.
  client = params.dereference()
  version, _ = client.latest(timeout=TIMEOUT)
  # >=: a SIGKILL is delivered some time after os.kill returns, and the
  # learner may publish once more before it dies.
  assert survivor.read(version)["version"] >= version
  # +1: the node held one version when it was counted, it holds two now.
  wait_until(lambda: node_fds(node) <= fds_before + 3, "the node closing the dead peers' fds")
  assert len(held_memfds(node)) == 2
  assert client.live_versions() == 2
  assert shm_names() <= shm

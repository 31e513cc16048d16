"""Broadcast of 64 MB of parameters to 8 and 32 actors of this host.

Three ways, `--runs` rounds each per actor count, medians reported. All
three run at once (their actors idle between rounds) and take turns, so
that each sees the same minutes of a shared machine: each turn is an
untimed round, which takes the work the other side's last round left
behind (Ray's frees, the broadcast node's), then a timed one:
  courier    today's path: a CourierNode whose get_params() returns the
             arrays; every actor calls it (one pickled copy per actor).
  broadcast  lp.BroadcastNode: the learner publishes once (into a memfd of
             its own that no one holds any more), every actor calls
             latest(v) and maps it read-only.
  ray        ray.put once in the driver, every actor ray.get()s it (a local
             cluster on 127.0.0.1, shut down at the end). On a virtual
             machine that hands freed memory back to its host, Ray's
             default store (30% of memory) can put a version into pages the
             host must fault in again (ray.put 160-240 ms in some runs
             here); --ray-store-mb 400 makes it write where its last
             versions were, as the broadcast does.

A round's time runs from the publish (courier: the learner's new arrays are
in place; broadcast: publish(); ray: ray.put) until every actor holds the
version; actors are told to fetch through courier futures, all at once. The
actors do not read the arrays in the timed part. The publish alone and the
delivery after it (every actor's fetch) are reported too. Afterwards each
actor touches every page of the version it holds and the total growth of
the actors' PSS is compared with one copy.

The PSS baseline is taken after a first, untimed round of a tiny version
through the same path: an actor's first fetch adds ~1 MB of its own (two
threads: the reader of the connection the futures open, and courier's
watchdog, with their stacks and allocator arenas; fork-server pages it
writes to), whatever the version's size; that is not the cost of holding
a version.

Usage: python bench/broadcast.py [--runs 5] [--actors 8,32] [--mb 64]
                                [--kinds courier,broadcast,ray] [--ray-store-mb 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import peers
import psutil

import launchpad as lp

TIMEOUT = 300.0
MB = 1 << 20


def make_params(version: int, size: int) -> dict:
  """Parameters of about `size` bytes: a few layers of float32."""
  layers = 8
  return {f"layer{i}": np.full(size // layers // 4, version, np.float32) for i in range(layers)}


def touch(params: dict) -> float:
  """Reads one float of every page (4096 bytes) of every array."""
  return float(sum(a[::1024].sum() for a in params.values()))


def pss() -> int:
  return psutil.Process().memory_full_info().pss


def mapped_pss() -> int:
  """This process's share of the broadcast versions it maps."""
  maps = psutil.Process().memory_maps(grouped=True)
  return sum(m.pss for m in maps if m.path.startswith("/memfd:launchpad-broadcast"))


class ParamServer:
  """Today's path: the learner serves its arrays through courier."""

  def __init__(self, size: int):
    self._params = make_params(0, size)

  def set_version(self, version: int, size: int) -> None:
    self._params = make_params(version, size)

  def get_params(self) -> dict:
    return self._params


class CourierActor:
  def __init__(self, server):
    self._server = server
    self._held = None

  def fetch(self, version: int) -> int:
    self._held = self._server.get_params()
    return version

  def touch(self) -> float:
    return touch(self._held)

  def pss(self) -> int:
    return pss()


class BroadcastActor:
  def __init__(self, params):
    self._params = params
    self._held = None

  def fetch(self, version: int) -> int:
    got, self._held = self._params.latest(version, timeout=TIMEOUT)
    return got

  def touch(self) -> float:
    return touch(self._held)

  def pss(self) -> int:
    return pss()

  def mapped_pss(self) -> int:
    return mapped_pss()


def launch(kind: str, actors: int, size: int):
  program = lp.Program(f"bench-{kind}")
  if kind == "courier":
    source = program.add_node(lp.CourierNode(ParamServer, size), label="learner")
    actor_class = CourierActor
  else:
    source = program.add_node(lp.BroadcastNode(), label="params")
    actor_class = BroadcastActor
  handles = [
    program.add_node(lp.CourierNode(actor_class, source), label="actor") for _ in range(actors)
  ]
  controller = lp.launch(program, launch_type="local_mp", terminal="output_to_files")
  return controller, source.dereference(), [h.dereference() for h in handles]


# The untimed first round's version: 8 floats, the same path as the rest.
WARM_UP_SIZE = 8 * 4


class Times:
  """Per round: the publish alone, and the delivery to every actor after it."""

  def __init__(self):
    self.publish: list[float] = []
    self.delivery: list[float] = []

  def add(self, start: float, published: float, delivered: float) -> None:
    self.publish.append(published - start)
    self.delivery.append(delivered - published)

  @property
  def rounds(self) -> list[float]:
    return [p + d for p, d in zip(self.publish, self.delivery, strict=True)]


class LaunchpadSide:
  """courier or broadcast: a program of a source node and the actors."""

  def __init__(self, kind: str, actors: int, size: int):
    self.kind = kind
    self._size = size
    self._controller, self._source, self._clients = launch(kind, actors, size)
    for c in self._clients:
      c.pss()  # connected and serving
    self.times = Times()
    self._version = 0
    self.round(WARM_UP_SIZE)  # version 1, untimed; the broadcast node numbers from 1
    self._base = [c.pss() for c in self._clients]

  def round(self, size: int | None = None, timed: bool = True) -> None:
    self._version += 1
    version, size = self._version, size or self._size
    if self.kind == "courier":
      self._source.set_version(version, size)  # outside the timing: the learner's update
    params = make_params(version, size) if self.kind == "broadcast" else None
    start = time.perf_counter()
    if self.kind == "broadcast":
      self._source.publish(params, timeout=TIMEOUT)
    published = time.perf_counter()
    futures = [c.futures.fetch(version) for c in self._clients]
    assert [f.result(TIMEOUT) for f in futures] == [version] * len(self._clients)
    if timed and version > 1:
      self.times.add(start, published, time.perf_counter())

  def grown(self) -> int:
    """The actors' PSS growth since the warm-up, once each touched its version."""
    for c in self._clients:
      c.touch()
    grown = sum(c.pss() - b for c, b in zip(self._clients, self._base, strict=True))
    if self.kind == "broadcast":
      mapped = sum(c.mapped_pss() for c in self._clients)
      print(f"    the version's own pages in the actors' PSS: {mapped / MB:.0f} MB")
    return grown

  def close(self) -> None:
    self._controller.stop(timeout=60)


def start_ray(store_mb: int):
  """Ray, imported through launchpad's Ray launcher (which sets Ray's loopback
  switch for the import, as the tests' local_ray does), started on loopback
  only: its raylet and GCS listen on 127.0.0.1. `store_mb`: the object
  store's size (0: Ray's default, 30% of memory)."""
  from launchpad.launch import ray as ray_launcher

  ray = ray_launcher.ray
  ray.init(
    include_dashboard=False,
    num_cpus=2,
    log_to_driver=False,
    object_store_memory=store_mb * MB if store_mb else None,
  )
  ip = ray.util.get_node_ip_address()
  if not ip.startswith("127."):
    ray.shutdown()
    raise SystemExit(
      f"Ray's node address is {ip}, not loopback: Ray was imported before launchpad's Ray "
      "launcher; run the bench in a fresh process."
    )
  return ray


class RaySide:
  """ray.put once in the driver, every actor ray.get()s it."""

  kind = "ray"

  def __init__(self, actors: int, size: int, store_mb: int):
    self._ray = ray = start_ray(store_mb)
    self._size = size

    @ray.remote(num_cpus=0)
    class RayActor:
      def __init__(self):
        self._held = None

      def fetch(self, refs: list, version: int) -> int:
        self._held = ray.get(refs[0])
        return version

      def touch(self) -> float:
        return touch(self._held)

      def pss(self) -> int:
        return pss()

    self._handles = [RayActor.remote() for _ in range(actors)]
    ray.get([h.pss.remote() for h in self._handles], timeout=TIMEOUT)  # every actor started
    self.times = Times()
    self._version = 0
    self.round(WARM_UP_SIZE)  # untimed, as for launchpad
    self._base = ray.get([h.pss.remote() for h in self._handles], timeout=TIMEOUT)

  def round(self, size: int | None = None, timed: bool = True) -> None:
    ray = self._ray
    self._version += 1
    version = self._version
    params = make_params(version, size or self._size)
    start = time.perf_counter()
    ref = ray.put(params)
    published = time.perf_counter()
    got = ray.get([h.fetch.remote([ref], version) for h in self._handles], timeout=TIMEOUT)
    assert got == [version] * len(self._handles)
    if timed and version > 1:
      self.times.add(start, published, time.perf_counter())

  def grown(self) -> int:
    ray = self._ray
    ray.get([h.touch.remote() for h in self._handles], timeout=TIMEOUT)
    after = ray.get([h.pss.remote() for h in self._handles], timeout=TIMEOUT)
    return sum(a - b for a, b in zip(after, self._base, strict=True))

  def close(self) -> None:
    self._ray.shutdown()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--actors", default="8,32")
  parser.add_argument("--mb", type=int, default=64)
  parser.add_argument("--kinds", default="courier,broadcast,ray", help="which of the three to run")
  parser.add_argument(
    "--ray-store-mb",
    type=int,
    default=0,
    help="Ray's object store size (default: Ray's, 30%% of memory); a store of a few versions "
    "is written again where the last ones were, as the broadcast's files are",
  )
  args = parser.parse_args()
  print(peers.interpreter_speed(), flush=True)
  home = tempfile.TemporaryDirectory(prefix="bench-broadcast-")  # the programs' run directories
  os.environ.setdefault("LAUNCHPAD_HOME", home.name)
  size = args.mb * MB
  print(f"{args.mb} MB of parameters, {args.runs} runs each; load average {os.getloadavg()[0]:.1f}")
  for actors in (int(n) for n in args.actors.split(",")):
    sides = []
    try:
      for kind in args.kinds.split(","):
        sides.append(
          RaySide(actors, size, args.ray_store_mb)
          if kind == "ray"
          else LaunchpadSide(kind, actors, size)
        )
      for _ in range(args.runs):
        for side in sides:
          side.round(timed=False)  # takes the tail of the other side's last round
          side.round()
      results = {}
      for side in sides:
        times, grown = side.times, side.grown()
        rounds = times.rounds
        results[side.kind] = statistics.median(rounds)
        print(
          f"{actors:3d} actors  {side.kind:9s}  median {results[side.kind] * 1000:8.1f} ms  "
          f"(min {min(rounds) * 1000:.1f}, max {max(rounds) * 1000:.1f}; publish "
          f"{statistics.median(times.publish) * 1000:.1f}, delivery "
          f"{statistics.median(times.delivery) * 1000:.1f})  "
          f"actors' PSS +{grown / MB:.0f} MB = {grown / size:.2f}x one copy"
        )
    finally:
      for side in sides:
        side.close()
    if "broadcast" in results and len(results) > 1:
      ours = results.pop("broadcast")
      ratios = ", ".join(f"{results[kind] / ours:.1f}x {kind}" for kind in results)
      print(
        f"{actors:3d} actors  broadcast is {ratios}  (goals at 32 actors: >= 8x courier, "
        ">= 1.5x ray; PSS <= 2x one copy)"
      )
    print(f"    load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()

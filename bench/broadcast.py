"""Broadcast of 64 MB of parameters to 8 and 32 actors of this host.

Three ways, each run `--runs` times per actor count, medians reported:
  courier    today's path: a CourierNode whose get_params() returns the
             arrays; every actor calls it (one pickled copy per actor).
  broadcast  lp.BroadcastNode: the learner publishes once (a sealed memfd),
             every actor calls latest(v) and maps it read-only.
  ray        ray.put once in the driver, every actor ray.get()s it (a local
             cluster on 127.0.0.1, shut down at the end).

A round's time runs from the publish (courier: the learner's new arrays are
in place; broadcast: publish(); ray: ray.put) until every actor holds the
version; actors are told to fetch through courier futures, all at once. The
actors do not read the arrays in the timed part. Afterwards each actor
touches every page of the version it holds and the total growth of the
actors' PSS is compared with one copy.

Usage: python bench/broadcast.py [--runs 5] [--actors 8,32] [--mb 64] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
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
    self._size = size
    self._params = make_params(0, size)

  def set_version(self, version: int) -> None:
    self._params = make_params(version, self._size)

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


def run_lp(kind: str, actors: int, size: int, runs: int) -> tuple[list[float], int]:
  controller, source, clients = launch(kind, actors, size)
  try:
    for c in clients:
      c.pss()  # connected and serving
    base = [c.pss() for c in clients]
    times = []
    for version in range(1, runs + 1):
      if kind == "courier":
        source.set_version(version)  # outside the timing: the learner's own update
      start = time.perf_counter()
      if kind == "broadcast":
        source.publish(make_params(version, size), timeout=TIMEOUT)
      futures = [c.futures.fetch(version) for c in clients]
      assert [f.result(TIMEOUT) for f in futures] == [version] * actors
      times.append(time.perf_counter() - start)
    for c in clients:
      c.touch()
    grown = sum(c.pss() - b for c, b in zip(clients, base, strict=True))
    if kind == "broadcast":
      mapped = sum(c.mapped_pss() for c in clients)
      print(f"    the version's own pages in the {actors} actors' PSS: {mapped / MB:.0f} MB")
    return times, grown
  finally:
    controller.stop(timeout=60)


def run_ray(actors: int, size: int, runs: int) -> tuple[list[float], int]:
  import ray

  ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False)
  try:

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

    handles = [RayActor.remote() for _ in range(actors)]
    base = ray.get([h.pss.remote() for h in handles], timeout=TIMEOUT)
    times = []
    for version in range(1, runs + 1):
      params = make_params(version, size)
      start = time.perf_counter()
      ref = ray.put(params)
      got = ray.get([h.fetch.remote([ref], version) for h in handles], timeout=TIMEOUT)
      assert got == [version] * actors
      times.append(time.perf_counter() - start)
      del ref
    ray.get([h.touch.remote() for h in handles], timeout=TIMEOUT)
    after = ray.get([h.pss.remote() for h in handles], timeout=TIMEOUT)
    return times, sum(a - b for a, b in zip(after, base, strict=True))
  finally:
    ray.shutdown()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--actors", default="8,32")
  parser.add_argument("--mb", type=int, default=64)
  parser.add_argument("--no-ray", action="store_true")
  args = parser.parse_args()
  os.environ.setdefault("LAUNCHPAD_HOME", os.path.join(os.getcwd(), ".bench-home"))
  size = args.mb * MB
  print(f"{args.mb} MB of parameters, {args.runs} runs each; load average {os.getloadavg()[0]:.1f}")
  for actors in (int(n) for n in args.actors.split(",")):
    results = {}
    for kind in ("courier", "broadcast", *(() if args.no_ray else ("ray",))):
      times, grown = (
        run_ray(actors, size, args.runs) if kind == "ray" else run_lp(kind, actors, size, args.runs)
      )
      results[kind] = statistics.median(times)
      print(
        f"{actors:3d} actors  {kind:9s}  median {results[kind] * 1000:8.1f} ms  "
        f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})  "
        f"actors' PSS +{grown / MB:.0f} MB = {grown / size:.2f}x one copy"
      )
    ours = results["broadcast"]
    line = f"{actors:3d} actors  broadcast is {results['courier'] / ours:.1f}x courier"
    if "ray" in results:
      line += f", {results['ray'] / ours:.1f}x ray"
    print(line + "  (goals at 32 actors: >= 8x courier, >= 1.5x ray; PSS <= 2x one copy)")


if __name__ == "__main__":
  main()

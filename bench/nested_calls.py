"""Calls a node makes on to another while serving its futures.

A courier server runs a call of a client's futures inline on the
connection's reading thread and, once it has taken 5 ms, hands the
connection to a new reading thread. A node that serves long calls that way
and calls another node from them (a learner's handler that samples replay,
an actor's that asks the learner) makes its onward calls from threads that
come and go. Reported, for onward calls of each duration and each number of
the outer futures in flight:
  calls_s      outer calls completed per second
  connections  connections the inner node served them on (the distinct
               threads that served them: a synchronous call is served on its
               connection's reading thread), for `--calls` outer calls
The outer node and the caller run in this process, the inner node in a
spawned child. Medians of `--runs` runs.

Usage: python bench/nested_calls.py [--runs 3] [--calls 400]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time

from launchpad.courier.client import Client
from launchpad.courier.server import Server

SECRET = os.urandom(32)
TIMEOUT = 60.0
WORK_SECONDS = (0.001, 0.006, 0.02)
IN_FLIGHT = (1, 4)


class Inner:
  def work(self, seconds: float) -> int:
    """Sleeps `seconds` (the onward call's own time); the serving thread's id."""
    time.sleep(seconds)
    return threading.get_native_id()


class Outer:
  def __init__(self, inner: Client):
    self._inner = inner

  def relay(self, seconds: float) -> int:
    return self._inner.work(seconds)


def _serve_inner(queue, secret: bytes) -> None:
  server = Server(Inner(), secret=secret, label="inner[0]")
  server.start()
  queue.put(server.local_address)
  queue.get()  # until the parent says stop (or dies)
  server.stop()


def measure(inner_address: str, calls: int) -> dict[str, float]:
  """calls/s and connections for each (work, in flight), through a fresh outer node."""
  outer = Server(
    Outer(Client(inner_address, secret=SECRET, label="inner[0]", timeout=TIMEOUT)),
    secret=SECRET,
    label="outer[0]",
  )
  outer.start()
  client = Client(outer.local_address, secret=SECRET, label="outer[0]", timeout=TIMEOUT)
  figures = {}
  try:
    for seconds in WORK_SECONDS:
      for in_flight in IN_FLIGHT:
        n = calls if seconds < 0.01 else calls // 4
        served_on: set[int] = set()
        pending = []
        start = time.perf_counter()
        for _ in range(n):
          pending.append(client.futures.relay(seconds))
          if len(pending) >= in_flight:
            served_on.add(pending.pop(0).result(TIMEOUT))
        served_on.update(f.result(TIMEOUT) for f in pending)
        name = f"work_{seconds * 1e3:g}ms_inflight{in_flight}"
        figures[f"{name}_calls_s"] = n / (time.perf_counter() - start)
        figures[f"{name}_connections_per_{n}_calls"] = len(served_on)
  finally:
    client.close()
    outer.stop()
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--calls", type=int, default=400)
  args = parser.parse_args()
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=_serve_inner, args=(queue, SECRET), daemon=True)
  child.start()
  try:
    inner_address = queue.get(timeout=TIMEOUT)
    runs = [measure(inner_address, args.calls) for _ in range(args.runs)]
  finally:
    queue.put("stop")
    child.join(TIMEOUT)
    if child.is_alive():
      child.kill()
  print(f"medians of {args.runs} runs")
  for name in runs[0]:
    print(f"  {name:48s} {statistics.median(r[name] for r in runs):8.0f}")


if __name__ == "__main__":
  main()

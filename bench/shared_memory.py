"""Same-host courier transfers of large numpy arrays: in the socket stream, as memfds, and memcpy.

Two servers in child processes (spawn), one that sends every buffer in the
socket stream (LAUNCHPAD_SHARED_MEMORY_BYTES=off) and one that sends every
buffer as a memfd (=1); the client connects to each over its Unix socket
with the same setting, so both directions of a call take the one path.

transfer  a 256 MiB and a 1 GiB array sent to a server that takes it (the
          call returns once the server holds the array), `--runs` rounds,
          interleaved: in-band, memfd, memcpy (a numpy copy of the array: a
          fresh array, as the receiver's memory is) and copyto (np.copyto
          into memory touched before, anchors/floors.py's memcpy); medians,
          spread, and each one's GB/s against memcpy's (goal: memfd >= 0.5x).
          With --touch the server also reads one byte of each page.
crossover echo round trips (the array there and back) of 64 KiB to 64 MiB,
          in-band against memfd, interleaved, medians of `--runs` rounds: the
          threshold (shared_memory.DEFAULT_THRESHOLD) is the smallest size
          from which memfd wins.

At most ~3 GiB is in use at once (the 1 GiB array, copyto's destination, the receiver's copy).
Usage: python bench/shared_memory.py [--runs 5] [--touch]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import os
import statistics
import time

import numpy as np

from launchpad.courier import shared_memory
from launchpad.courier.client import Client
from launchpad.courier.server import Server

SECRET = os.urandom(32)
MIB = 1 << 20
TRANSFER_SIZES = (256 * MIB, 1024 * MIB)
CROSSOVER_SIZES = tuple(k * 1024 for k in (64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536))
PATHS = {"in-band": "off", "memfd": "1"}  # the threshold setting of each path


class Sink:
  def take(self, array: np.ndarray, touch: bool) -> int:
    if touch:  # one byte of each page: what paging the array in costs
      return int(array.reshape(-1).view(np.uint8)[::4096].sum())
    return array.nbytes

  def echo(self, array: np.ndarray) -> np.ndarray:
    return array


def _serve(queue, secret: bytes) -> None:
  server = Server(Sink(), secret=secret, label="sink[0]")
  server.start()
  queue.put(server.local_address)
  queue.get()  # serve until the parent says stop (or dies)


@contextlib.contextmanager
def servers():
  """path -> a client of a server of that path, both over Unix sockets."""
  ctx = mp.get_context("spawn")
  children, clients = [], {}
  try:
    for path, setting in PATHS.items():
      os.environ[shared_memory.THRESHOLD_VARIABLE] = setting  # the child's, then the client's
      queue = ctx.Queue()
      child = ctx.Process(target=_serve, args=(queue, SECRET), daemon=True)
      child.start()
      children.append((child, queue))
      clients[path] = Client(queue.get(timeout=120), secret=SECRET, label="sink[0]", timeout=600)
      clients[path].take(np.zeros(1, np.uint8), False)  # connected with this setting
    os.environ.pop(shared_memory.THRESHOLD_VARIABLE)
    yield clients
  finally:
    for client in clients.values():
      client.close()
    for child, queue in children:
      queue.put(None)
      child.join(30)


def transfer(clients: dict[str, Client], size: int, runs: int, touch: bool) -> dict[str, list]:
  """Seconds per transfer of `size` bytes on each path and for memcpy, interleaved."""
  source = np.ones(size, np.uint8)
  destination = np.zeros(size, np.uint8)  # touched: copyto pays no page faults
  seconds: dict[str, list[float]] = {path: [] for path in (*clients, "memcpy", "copyto")}
  for client in clients.values():
    client.take(source[: 16 * MIB], touch)  # warm up: allocator, page cache
  for _ in range(runs):
    for path in seconds:
      gc.collect()
      start = time.perf_counter()
      if path == "memcpy":
        copy = source.copy()
        if touch:
          int(copy[::4096].sum())
        del copy
      elif path == "copyto":
        np.copyto(destination, source)
      else:
        clients[path].take(source, touch)
      seconds[path].append(time.perf_counter() - start)
  return seconds


def crossover(clients: dict[str, Client], runs: int) -> dict[int, dict[str, float]]:
  """size -> path -> median echo seconds."""
  table = {}
  for size in CROSSOVER_SIZES:
    array = np.ones(size, np.uint8)
    echoes = max(3, min(200, (64 * MIB) // size))
    medians: dict[str, list[float]] = {path: [] for path in clients}
    for client in clients.values():
      client.echo(array)
    for _ in range(runs):
      for path, client in clients.items():
        start = time.perf_counter()
        for _ in range(echoes):
          client.echo(array)
        medians[path].append((time.perf_counter() - start) / echoes)
    table[size] = {path: statistics.median(times) for path, times in medians.items()}
  return table


def describe(times: list[float], size: int) -> str:
  median = statistics.median(times)
  return (
    f"{median * 1e3:8.1f} ms {size / median / 1e9:6.2f} GB/s "
    f"(spread {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} ms)"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--touch", action="store_true", help="the receiver reads every page")
  args = parser.parse_args()
  with open("/proc/loadavg") as f:
    print(f"load average {f.read().strip()}")
  with servers() as clients:
    for size in TRANSFER_SIZES:
      seconds = transfer(clients, size, args.runs, args.touch)
      memcpy = statistics.median(seconds["memcpy"])
      print(f"\n{size // MIB} MiB from one process to another, medians of {args.runs} runs")
      for path, times in seconds.items():
        ratio = memcpy / statistics.median(times)
        print(f"  {path:8s} {describe(times, size)}  {ratio:5.2f}x memcpy")
    print(f"\necho round trips (there and back), medians of {args.runs} runs")
    print(f"  {'size':>9s} {'in-band':>10s} {'memfd':>10s} {'memfd/in-band':>14s}")
    for size, medians in crossover(clients, args.runs).items():
      inband, memfd = medians["in-band"], medians["memfd"]
      label = f"{size // 1024} KiB" if size < MIB else f"{size // MIB} MiB"
      print(f"  {label:>9s} {inband * 1e6:8.0f}us {memfd * 1e6:8.0f}us {memfd / inband:14.2f}")
  with open("/proc/loadavg") as f:
    print(f"\nload average {f.read().strip()}")


if __name__ == "__main__":
  main()

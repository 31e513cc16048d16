"""Torch tensors and JAX arrays through courier, against numpy arrays of the same size.

A client and an echo server in two processes (spawn), over the Unix socket
that same-host clients use and over loopback TCP. Each run echoes a 16 MiB
numpy array, torch tensor (float32) and JAX array (float32) `--echoes` times
each, interleaved, after one warm-up echo, and reports GB/s (both ways
counted); the figures are medians of `--runs` runs, with each kind's ratio
to the numpy echo (goal >= 0.8). A small-call figure shows what pickling a
request costs a process that imported torch (the tensor-aware pickler), beside
plain `pickle.dumps`.

Usage: python bench/tensors.py [--runs 5] [--echoes 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import statistics
import time
import timeit

import jax
import jax.numpy as jnp
import numpy as np
import torch

from launchpad.courier import serialization
from launchpad.courier.client import Client
from launchpad.courier.server import Server

SECRET = os.urandom(32)
SIZE = 16 << 20
SMALL_CALLS = 20000


class Echo:
  def ping(self, x):
    return x


def _serve(queue, secret: bytes) -> None:
  import jax.numpy  # noqa: F401 - imported before serving, as a learner would have
  import torch  # noqa: F401

  server = Server(Echo(), secret=secret, label="echo[0]")
  server.start()
  queue.put((server.address, server.local_address))
  queue.get()  # serve until the parent says stop (or dies)


def values() -> dict:
  return {
    "numpy": np.ones(SIZE // 4, np.float32),
    "torch": torch.ones(SIZE // 4, dtype=torch.float32),
    "jax": jax.block_until_ready(jnp.ones(SIZE // 4, jnp.float32)),
  }


def measure(echoes: int) -> dict[str, float]:
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=_serve, args=(queue, SECRET), daemon=True)
  child.start()
  figures = {}
  try:
    tcp, unix = queue.get(timeout=120)
    for path, address in (("unix", unix), ("tcp", tcp)):
      client = Client(address, secret=SECRET, label="echo[0]", timeout=120)
      echoed = values()
      for value in echoed.values():
        client.ping(value)  # warm up: connection, imports, allocator
      seconds = {kind: [] for kind in echoed}
      for _ in range(echoes):
        for kind, value in echoed.items():  # interleaved, so a noisy moment hurts all alike
          start = time.perf_counter()
          got = client.ping(value)
          if kind == "jax":
            jax.block_until_ready(got)
          seconds[kind].append(time.perf_counter() - start)
      for kind, times in seconds.items():
        figures[f"{path}_{kind}_echo_GBs"] = 2 * SIZE / statistics.median(times) / 1e9
      client.close()
  finally:
    child.kill()
    child.join(10)
  return figures


def measure_small_calls() -> dict[str, float]:
  """Microseconds to pickle a small call's request: courier's (torch imported here) and plain."""
  request = ("ping", (1,), {})
  figures = {}
  for name, dumps in (
    ("courier", lambda: serialization.dumps(request)),
    ("plain", lambda: pickle.dumps(request, protocol=5, buffer_callback=[].append)),
  ):
    best = min(timeit.repeat(dumps, number=SMALL_CALLS, repeat=5))
    figures[f"small_call_dumps_{name}_us"] = best / SMALL_CALLS * 1e6
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--echoes", type=int, default=5)
  args = parser.parse_args()
  runs = []
  for run in range(args.runs):
    figures = measure(args.echoes)
    figures.update(measure_small_calls())
    runs.append(figures)
    print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
  medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  print(f"\nmedians of {args.runs} runs, 16 MiB echo, GB/s (goal: >= 0.8x numpy)")
  for path in ("unix", "tcp"):
    numpy_figure = medians[f"{path}_numpy_echo_GBs"]
    for kind in ("numpy", "torch", "jax"):
      value = medians[f"{path}_{kind}_echo_GBs"]
      print(f"  {path:4s} {kind:6s} {value:6.2f} GB/s  {value / numpy_figure:5.2f}x numpy")
  print(
    f"  pickling a small call with torch imported: {medians['small_call_dumps_courier_us']:.2f} us "
    f"(plain pickle.dumps: {medians['small_call_dumps_plain_us']:.2f} us)"
  )


if __name__ == "__main__":
  main()

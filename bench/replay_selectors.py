"""Prioritized selector throughput at 10^3, 10^5 and 10^6 items: O(log n) in practice.

For each size the sum tree is filled (bulk insert), then timed:
  sample        one draw per call (the table's path when items can expire)
  sample_many   batches of 256 (the table's path for a learner's batch)
  update        one priority change per call
  churn         one insert plus one delete (a full table evicting)
and, per operation, microseconds divided by the tree's depth log2(capacity):
if the cost is O(log n) that figure stays roughly flat while n grows 1000x.
For contrast, `naive` draws with numpy's `choice(n, p=...)`, which is O(n)
per draw (it normalises and scans the weights every time).

Usage: python bench/replay_selectors.py [--sizes 1000 100000 1000000] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from launchpad.replay.selectors import Prioritized


def rate(fn, per_call: int, seconds: float) -> float:
  """Calls fn repeatedly for about `seconds`; returns items (per_call each call) per second."""
  calls = 0
  start = time.perf_counter()
  elapsed = 0.0
  while elapsed < seconds:
    for _ in range(50):
      fn()
    calls += 50
    elapsed = time.perf_counter() - start
  return calls * per_call / elapsed


def build(n: int, seed: int = 0) -> tuple[Prioritized, np.random.Generator]:
  rng = np.random.default_rng(seed)
  selector = Prioritized(0.6, seed=seed)
  selector.insert_many(list(range(n)), rng.exponential(1.0, n).tolist())
  return selector, rng


def measure(n: int, seconds: float) -> dict[str, float]:
  start = time.perf_counter()
  selector, rng = build(n)
  figures = {"build_s": time.perf_counter() - start, "depth": math.log2(selector.capacity)}
  figures["sample"] = rate(selector.sample, 1, seconds)
  figures["sample_many"] = rate(lambda: selector.sample_many(256), 256, seconds)

  keys = rng.integers(0, n, 1 << 16).tolist()
  priorities = rng.exponential(1.0, 1 << 16).tolist()
  position = [0]

  def update() -> None:
    i = position[0] = (position[0] + 1) & 0xFFFF
    selector.update(keys[i], priorities[i])

  figures["update"] = rate(update, 1, seconds)

  next_key = [n]

  def churn() -> None:  # insert a new key, delete the oldest: the size stays n
    key = next_key[0]
    selector.insert(key, 1.0)
    selector.delete(key - n)
    next_key[0] = key + 1

  figures["churn"] = rate(churn, 1, seconds)

  weights = rng.exponential(1.0, n)
  figures["naive"] = rate(lambda: rng.choice(n, p=weights / weights.sum()), 1, seconds / 2)
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
  parser.add_argument("--seconds", type=float, default=0.5, help="time spent on each figure")
  args = parser.parse_args()

  print(
    f"{'items':>9} {'depth':>5} {'build s':>8} | {'sample/s':>9} {'batch256/s':>11} "
    f"{'update/s':>9} {'churn/s':>9} | {'naive/s':>8} | µs per op / depth: sample update churn"
  )
  for n in args.sizes:
    f = measure(n, args.seconds)
    per_level = [1e6 / f[k] / f["depth"] for k in ("sample", "update", "churn")]
    print(
      f"{n:>9,} {f['depth']:>5.0f} {f['build_s']:>8.2f} | {f['sample']:>9,.0f} "
      f"{f['sample_many']:>11,.0f} {f['update']:>9,.0f} {f['churn']:>9,.0f} | "
      f"{f['naive']:>8,.0f} | {per_level[0]:.2f} {per_level[1]:.2f} {per_level[2]:.2f}"
    )


if __name__ == "__main__":
  main()

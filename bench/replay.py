"""Replay insert and sample throughput, side by side with dm-reverb.

Runs, `--runs` times each, interleaved, and reports medians:
  ours   a launchpad.replay.Server in a child process (spawn), the
         replay.Client in this process (the cross-process path a program
         uses); and, unless --no-same-process, the server in this process
         (still over courier's sockets, without the process boundary).
  peer   ../shared/anchors/reverb_bench.py in the reference environment
         (dm-reverb 0.7.2; its server and gRPC client in one process),
         run from a temporary directory so that it does not import us.

Both sides use the same table (Uniform sampler, Fifo remover, max_size
100000, MinSize(1)) and the same items: "small" is 4 float32, "atari" is
84x84x4 uint8. Ours is measured through four calls:
  insert        client.insert, one item per RPC
  sample        client.sample, one item per RPC
  insert_batch  client.insert_batch, --batch items per RPC
  sample_batch  client.sample_batch, --batch items per RPC
The peer inserts through a trajectory writer (one item per step) and samples
with one streaming `client.sample(num_samples=n)`; for our one-RPC insert
the peer figure is its own one-RPC `client.insert` (bench/reverb_client_insert.py). Targets: the one-item
calls >= 1.0x the peer's figure, the batched calls >= 3x.

Usage: python bench/replay.py [--runs 3] [--batch 256] [--peer-python PATH]
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import pathlib
import time

import numpy as np
import peers

from launchpad import replay
from launchpad.replay import Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

TIMEOUT = 60.0
CLIENT_INSERT_SCRIPT = pathlib.Path(__file__).with_name("reverb_client_insert.py")
# label -> (shape, dtype, items per measurement of the one-item calls, of the batched calls)
ITEMS = {
  "small": ((4,), np.float32, 5000, 20000),
  "atari": ((84, 84, 4), np.uint8, 1000, 3000),
}
# Our call -> the peer's figure it is compared with (the peer inserts through
# its trajectory writer and samples with one streaming call).
CALLS = {
  "insert": "client_insert",
  "writer_insert": "insert",
  "sample": "sample",
  "sample_n": "sample",
  "insert_batch": "insert",
  "sample_batch": "sample",
}
TARGETS = {
  "insert": 1.0,
  "writer_insert": 1.0,
  "sample": 1.0,
  "sample_n": 1.0,
  "insert_batch": 3.0,
  "sample_batch": 3.0,
}


def make_table() -> Table:
  return Table("t", sel.Uniform(), sel.Fifo(), 100_000, rl.MinSize(1))


def serve(queue) -> None:
  """Child-process entry point: a replay server of one table until the parent says stop.

  Like a ReplayNode's process, it freezes what imports and setup made
  (process_main: WorkerSpec.run), so full collections walk only the items.
  """
  server = replay.Server([make_table()])
  gc.freeze()
  queue.put((server.address, server.secret))
  queue.get()  # serve until the parent says stop (or dies)
  server.stop()


def measure(client: replay.Client, batch: int) -> dict[str, float]:
  """items/s of each call for each item kind, on an empty table."""
  figures = {}
  for label, (shape, dtype, n_one, n_batch) in ITEMS.items():
    item = {"obs": np.ones(shape, dtype)}
    client.reset("t")
    client.insert(item, {"t": 1.0})  # warm up the connection
    client.sample("t")
    client.reset("t")

    start = time.perf_counter()
    for _ in range(n_one):
      client.insert(item, {"t": 1.0})
    figures[f"insert_{label}"] = n_one / (time.perf_counter() - start)

    # The peer's own insert path: a trajectory writer, one item per step.
    client.reset("t")
    start = time.perf_counter()
    with client.trajectory_writer(num_keep_alive_refs=1) as writer:
      for _ in range(n_batch):
        writer.append(item)
        writer.create_item("t", 1.0, {"obs": writer.history["obs"][-1]})
      writer.flush()
    figures[f"writer_insert_{label}"] = n_batch / (time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(n_one):
      client.sample("t")
    figures[f"sample_{label}"] = n_one / (time.perf_counter() - start)

    # The peer's own sampling call: sample(num_samples=n), items one by one.
    start = time.perf_counter()
    sampled = 0
    while sampled < n_batch:
      sampled += len(client.sample("t", num_samples=min(batch, n_batch - sampled)))
    figures[f"sample_n_{label}"] = sampled / (time.perf_counter() - start)

    client.reset("t")
    items = [item] * batch
    start = time.perf_counter()
    for _ in range(n_batch // batch):
      client.insert_batch(items, {"t": 1.0})
    figures[f"insert_batch_{label}"] = (n_batch // batch) * batch / (time.perf_counter() - start)

    start = time.perf_counter()
    sampled = 0
    while sampled < n_batch:
      sampled += len(client.sample_batch("t", batch).info.key)
    figures[f"sample_batch_{label}"] = sampled / (time.perf_counter() - start)
    client.reset("t")
  return figures


def measure_cross_process(batch: int) -> dict[str, float]:
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=serve, args=(queue,), daemon=True)
  child.start()
  try:
    address, secret = queue.get(timeout=TIMEOUT)
    client = replay.Client(address, secret=secret, timeout=TIMEOUT)
    figures = measure(client, batch)
    client.close()
    queue.put("stop")
    child.join(TIMEOUT)
  finally:
    if child.is_alive():
      child.kill()
      child.join(10)
  return figures


def measure_same_process(batch: int) -> dict[str, float]:
  with replay.Server([make_table()]) as server:
    client = server.localhost_client(timeout=TIMEOUT)
    figures = measure(client, batch)
    client.close()
  return figures


def run_peer(python: str, script: pathlib.Path, timeout: float) -> dict[str, float]:
  """The peer's items/s, parsed from its ANCHOR lines."""
  return peers.run_script(python, script, r"^ANCHOR reverb_(\S+) (\S+) items/s", timeout)


def main() -> None:
  parser = peers.parser(__doc__)
  parser.add_argument("--batch", type=int, default=256, help="items per batched call")
  parser.add_argument(
    "--no-same-process", action="store_true", help="skip the server-in-this-process figures"
  )
  args = parser.parse_args()

  script = args.anchors / "reverb_bench.py"
  have_peer = pathlib.Path(args.peer_python).exists() and script.exists()
  if not have_peer:
    print(f"peer skipped: no {args.peer_python} or no {script}", flush=True)
  cross, same, peer = [], [], []
  for run in range(args.runs):
    # Interleaved, so that a noisy minute hurts both sides alike.
    cross.append(measure_cross_process(args.batch))
    if have_peer:
      figures = run_peer(args.peer_python, script, 300)
      figures.update(run_peer(args.peer_python, CLIENT_INSERT_SCRIPT, 300))
      peer.append(figures)
    if not args.no_same_process:
      same.append(measure_same_process(args.batch))
    print(f"run {run + 1}/{args.runs} done", flush=True)

  cross_m, same_m, peer_m = peers.median_of(cross), peers.median_of(same), peers.median_of(peer)
  print(f"\nmedians of {args.runs} runs, items/s (batch {args.batch})")
  header = f"{'call':14s} {'item':6s} {'ours x-process':>15s} {'ours same-proc':>15s}"
  print(f"{header} {'dm-reverb':>11s} {'ratio':>7s} {'target':>7s}")
  for call in CALLS:
    for label in ITEMS:
      ours = cross_m.get(f"{call}_{label}")
      same_value = same_m.get(f"{call}_{label}")
      theirs = peer_m.get(f"{CALLS[call]}_{label}")
      ratio = f"{ours / theirs:7.2f}" if ours and theirs else f"{'-':>7s}"
      print(
        f"{call:14s} {label:6s} {_num(ours):>15s} {_num(same_value):>15s} {_num(theirs):>11s} "
        f"{ratio} {'>= ' + format(TARGETS[call], 'g'):>7s}"
      )


def _num(value: float | None) -> str:
  return "-" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
  main()

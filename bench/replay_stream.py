"""A learner's batches from a replay table: replay.Stream against Reverb's dataset and sample_batch.

The setting of ../shared/anchors/reverb_dataset_bench.py: a server process
fills one table (Uniform sampler, Fifo remover, MinSize(1)) with 10,000
Atari-sized items (84x84x4 uint8); a learner in another process draws
batches of 32 and does nothing else with them. Reported in batches/s:
  ours    a launchpad.replay.Server in a spawned child process; the client in
          this process, through `client.stream(...)` (each in-flight and
          workers setting) and, for reference, one `client.sample_batch` per
          batch. `unix_` figures connect to the server's Unix socket, as a
          same-host learner of a program reaches its replay node: streams
          there get their batches through shared memory (replay/ring.py);
          `tcp_` figures connect over loopback TCP (as the peer's gRPC)
  peer    the anchor script in the reference environment (dm-reverb 0.7.2):
          `TrajectoryDataset.from_table_signature(...).batch(32)
          .as_numpy_iterator()` with 64 and 256 samples in flight per
          worker, and plain `client.sample`
Runs are interleaved (ours, then the peer's) `--runs` times; the figures are
medians. Goal: the stream >= 3x Reverb's dataset (its better setting).
The `_train_2ms` figures sleep 2 ms after each batch, as a learner whose
step runs on an accelerator: there the stream hides the round trip that
sample_batch waits for.

Usage: python bench/replay_stream.py [--runs 5] [--peer-python PATH]
"""

from __future__ import annotations

import multiprocessing as mp
import pathlib
import time

import numpy as np
import peers

from launchpad import replay
from launchpad.replay import Table
from launchpad.replay import rate_limiters as rl
from launchpad.replay import selectors as sel

TIMEOUT = 120.0
SHAPE, TABLE_SIZE, BATCH = (84, 84, 4), 10_000, 32
WARMUP, BATCHES, PLAIN_BATCHES, TRAIN_BATCHES = 20, 1000, 300, 300
TRAIN_SECONDS = 0.002  # a learner's step on an accelerator, which leaves the CPU free
# (max_in_flight_batches, num_workers) of the streams measured; (8, 2) is the default.
STREAMS = ((2, 1), (8, 1), (8, 2), (16, 2))


def _serve(queue) -> None:
  table = Table("t", sel.Uniform(), sel.Fifo(), TABLE_SIZE, rl.MinSize(1))
  server = replay.Server([table])
  client = server.localhost_client(timeout=TIMEOUT)
  rng = np.random.default_rng(0)
  for _ in range(TABLE_SIZE // 500):
    client.insert_batch(
      [{"obs": rng.integers(0, 255, SHAPE, dtype=np.uint8)} for _ in range(500)], {"t": 1.0}
    )
  client.close()
  queue.put((server.address, server.local_address, server.secret))
  queue.get()  # serve until the parent says stop (or dies)
  server.stop()


def measure_ours() -> dict[str, float]:
  """batches/s of each stream setting and of plain sample_batch, against a fresh server."""
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=_serve, args=(queue,), daemon=True)
  child.start()
  figures = {}
  try:
    tcp, unix, secret = queue.get(timeout=TIMEOUT)
    for transport, address in (("unix", unix), ("tcp", tcp)):
      figures.update(
        _measure_client(transport, replay.Client(address, secret=secret, timeout=TIMEOUT))
      )
    queue.put("stop")
    child.join(TIMEOUT)
  finally:
    if child.is_alive():
      child.kill()
      child.join(10)
  return figures


def _measure_client(transport: str, client: replay.Client) -> dict[str, float]:
  """batches/s of each stream setting and of sample_batch through `client`; closes it."""
  figures = {}
  for in_flight, workers in STREAMS:
    with client.stream("t", BATCH, max_in_flight_batches=in_flight, num_workers=workers) as stream:
      figures[f"{transport}_stream_inflight{in_flight}_workers{workers}"] = _rate(
        lambda: next(stream), BATCHES
      )
  figures[f"{transport}_sample_batch"] = _rate(
    lambda: client.sample_batch("t", BATCH), PLAIN_BATCHES
  )
  # A learner that trains between batches on another device (a sleep: the CPU is free).
  with client.stream("t", BATCH) as stream:
    figures[f"{transport}_stream_train_2ms"] = _rate(
      lambda: next(stream), TRAIN_BATCHES, train=True
    )
  figures[f"{transport}_sample_batch_train_2ms"] = _rate(
    lambda: client.sample_batch("t", BATCH), TRAIN_BATCHES, train=True
  )
  client.close()
  return figures


def _rate(draw, batches: int, train: bool = False) -> float:
  """Batches per second of `draw()`, with TRAIN_SECONDS of training after each if `train`."""
  for _ in range(WARMUP):
    draw()
  start = time.perf_counter()
  for _ in range(batches):
    draw()
    if train:
      time.sleep(TRAIN_SECONDS)
  return batches / (time.perf_counter() - start)


def main() -> None:
  args = peers.parser(__doc__).parse_args()
  print(peers.interpreter_speed(), flush=True)
  script = args.anchors / "reverb_dataset_bench.py"
  have_peer = pathlib.Path(args.peer_python).exists() and script.exists()
  if not have_peer:
    print(f"peer skipped: no {args.peer_python} or no {script}", flush=True)
  ours, peer = [], []
  for run in range(args.runs):
    ours.append(measure_ours())
    if have_peer:
      peer.append(
        peers.run_script(args.peer_python, script, r"^ANCHOR reverb_(\S+)_batches_per_s (\S+)", 600)
      )
    print(f"run {run + 1}/{args.runs}: {ours[-1]} {peer[-1] if peer else ''}", flush=True)

  ours_m, peer_m = peers.median_of(ours), peers.median_of(peer)
  dataset = max(peer_m.get("dataset_inflight64", 0.0), peer_m.get("dataset_inflight256", 0.0))
  print(f"\nmedians of {args.runs} runs, batches of {BATCH} 84x84x4 uint8 items per second")
  for name, value in {**ours_m, **{f"reverb_{k}": v for k, v in peer_m.items()}}.items():
    ratio = f"{value / dataset:6.2f}x Reverb's dataset" if dataset and "train" not in name else ""
    print(f"  {name:32s} {value:8.0f}  {ratio}")
  print("goal: the stream >= 3x Reverb's dataset")


if __name__ == "__main__":
  main()

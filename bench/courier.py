"""Courier RPC figures, side by side with DeepMind's courier and the floors.

Runs, `--runs` times each and reports medians:
  ours     client and server in two processes (spawn), over the Unix socket
           that same-host clients use and over loopback TCP (the cross-host path)
  courier  ../shared/anchors/lp_courier_rtt.py in the reference environment
           (client and server in one process; dm-launchpad 0.5.2, Python 3.10)
  floors   ../shared/anchors/floors.py (bare sockets, grpcio, memcpy)
and prints the ratios the targets are stated in.

Usage: python bench/courier.py [--runs 3] [--anchors DIR] [--peer-python PATH]
The reference environment is built by anchors/setup_anchor_venvs.sh; without
it the peer's figures are skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pathlib
import sys
import time

import numpy as np
import peers

from launchpad.courier.client import Client
from launchpad.courier.server import Server

SECRET = os.urandom(32)
N_CALLS = 3000


class Echo:
  def ping(self, x):
    return x


def _serve(queue, secret: bytes) -> None:
  server = Server(Echo(), secret=secret, label="echo[0]")
  server.start()
  queue.put((server.address, server.local_address))
  queue.get()  # serve until the parent says stop (or dies)


def measure_ours() -> dict[str, float]:
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=_serve, args=(queue, SECRET), daemon=True)
  child.start()
  tcp, unix = queue.get(timeout=60)
  figures = {}
  try:
    for path, address in (("unix", unix), ("tcp", tcp)):
      client = Client(address, secret=SECRET, label="echo[0]", timeout=60)
      client.ping(0)
      start = time.perf_counter()
      for i in range(N_CALLS):
        client.ping(i)
      figures[f"{path}_sync_rtt_us"] = (time.perf_counter() - start) / N_CALLS * 1e6
      start = time.perf_counter()
      futures = [client.futures.ping(i) for i in range(N_CALLS)]
      for f in futures:
        f.result(timeout=60)
      figures[f"{path}_futures_calls_s"] = N_CALLS / (time.perf_counter() - start)
      for mib in (1, 16, 64):
        figures[f"{path}_bytes_echo_{mib}MiB_GBs"] = _echo(client, b"\0" * (mib << 20))
      figures[f"{path}_numpy_echo_16MiB_GBs"] = _echo(client, np.zeros(16 << 20, np.uint8))
      client.close()
  finally:
    child.kill()
    child.join(10)
  return figures


def _echo(client: Client, value) -> float:
  client.ping(value)
  start = time.perf_counter()
  for _ in range(5):
    client.ping(value)
  size = value.nbytes if isinstance(value, np.ndarray) else len(value)
  return 5 * 2 * size / (time.perf_counter() - start) / 1e9


def main() -> None:
  args = peers.parser(__doc__).parse_args()

  have_peer = (
    pathlib.Path(args.peer_python).exists() and (args.anchors / "lp_courier_rtt.py").exists()
  )
  if not have_peer:
    print(f"peer skipped: no {args.peer_python} or anchors in {args.anchors}", flush=True)
  ours, peer, floors = [], [], []
  for run in range(args.runs):
    # Interleaved, so that a noisy minute hurts both sides alike.
    ours.append(measure_ours())
    if have_peer:
      peer.append(
        peers.run_script(
          args.peer_python, args.anchors / "lp_courier_rtt.py", r"^ANCHOR (\S+) (\S+)", 45
        )
      )
    if (args.anchors / "floors.py").exists():
      floors.append(
        peers.run_script(sys.executable, args.anchors / "floors.py", r"^FLOOR (\S+) (\S+)", 300)
      )
    print(f"run {run + 1}/{args.runs} done", flush=True)

  ours_m, peer_m, floors_m = peers.median_of(ours), peers.median_of(peer), peers.median_of(floors)
  print(f"\nmedians of {args.runs} runs")
  for title, figures in (("ours", ours_m), ("courier (peer)", peer_m), ("floors", floors_m)):
    for name, value in figures.items():
      print(f"{title:16s} {name:32s} {value:10.3f}")

  if peer_m:
    print("\nratios (target in brackets)")
    for path in ("unix", "tcp"):
      _ratio(
        f"{path} sync rtt / courier sync rtt [<= 0.25]",
        ours_m[f"{path}_sync_rtt_us"],
        peer_m.get("courier_sync_rtt"),
      )
      _ratio(
        f"{path} futures / courier futures [>= 4]",
        ours_m[f"{path}_futures_calls_s"],
        peer_m.get("courier_futures"),
      )
      _ratio(
        f"{path} numpy 16MiB echo / courier bytes 16MiB [>= 2]",
        ours_m[f"{path}_numpy_echo_16MiB_GBs"],
        peer_m.get("courier_bytes_echo_16MiB"),
      )
      _ratio(
        f"{path} bytes 16MiB echo / courier bytes 16MiB",
        ours_m[f"{path}_bytes_echo_16MiB_GBs"],
        peer_m.get("courier_bytes_echo_16MiB"),
      )
  if floors_m:
    for path in ("unix", "tcp"):
      _ratio(
        f"{path} numpy 16MiB echo / memcpy [>= 0.3]",
        ours_m[f"{path}_numpy_echo_16MiB_GBs"],
        floors_m.get("memcpy"),
      )
    _ratio(
      "unix sync rtt / bare unix socket rtt", ours_m["unix_sync_rtt_us"], floors_m.get("uds_rtt")
    )
    _ratio("tcp sync rtt / bare tcp socket rtt", ours_m["tcp_sync_rtt_us"], floors_m.get("tcp_rtt"))
    _ratio(
      "grpc unary rtt / unix sync rtt", floors_m.get("grpc_unary_rtt"), ours_m["unix_sync_rtt_us"]
    )


def _ratio(label: str, a: float | None, b: float | None) -> None:
  if a is not None and b:
    print(f"  {label:55s} {a / b:8.2f}")


if __name__ == "__main__":
  main()

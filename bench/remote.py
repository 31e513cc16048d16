"""RPC between SSH "hosts" against the same program in multiprocess mode.

One program, launched unchanged by each launcher: an echo server and a
caller that measures, from inside its node, the sync round trip of a small
call and a 16 MiB numpy echo. The SSH hosts are a real sshd on two loopback
addresses (tests/sshd.py), so the caller and the server are different
"hosts" and talk over TCP, as they would across machines (minus the
network); in multiprocess mode they are on one host and use a Unix socket.
Also measured: the SSH launch with TLS.

Usage: python bench/remote.py [--runs 3]
Needs OpenSSH's sshd (apt-get install openssh-server).
"""

from __future__ import annotations

import pathlib
import re
import statistics
import sys
import tempfile
import time

import numpy as np
import peers

import launchpad as lp

sys.path.insert(0, str(peers.ROOT))
from tests.sshd import HOSTS, LoopbackSshd  # the repository's test sshd

N_CALLS = 2000
N_ECHOES = 5
ECHO_BYTES = 16 * 2**20


class Echo:
  def ping(self, x):
    return x


def measure(echo) -> None:
  """Runs in the caller node: prints FIGURE lines, then stops the program."""
  echo.ping(0)
  start = time.perf_counter()
  for i in range(N_CALLS):
    echo.ping(i)
  rtt = (time.perf_counter() - start) / N_CALLS
  array = np.ones(ECHO_BYTES // 4, np.float32)
  echo.ping(array)
  start = time.perf_counter()
  for _ in range(N_ECHOES):
    echo.ping(array)
  echo_seconds = (time.perf_counter() - start) / N_ECHOES
  print(f"FIGURE sync_rtt_us {rtt * 1e6:.1f}", flush=True)
  print(f"FIGURE echo_16mib_gbps {2 * ECHO_BYTES / echo_seconds / 1e9:.3f}", flush=True)
  lp.stop()


def make_program() -> lp.Program:
  program = lp.Program("remote_bench")
  with program.group("echo"):
    echo = program.add_node(lp.CourierNode(Echo))
  with program.group("caller"):
    program.add_node(lp.PyNode(measure, echo))
  return program


def run_once(launch_type: str, **kwargs) -> dict[str, float]:
  controller = lp.launch(make_program(), launch_type=launch_type, **kwargs)
  controller.wait(300)
  text = (pathlib.Path(controller.run_dir) / "caller[0].log").read_text()
  return {k: float(v) for k, v in re.findall(r"FIGURE (\S+) (\S+)", text)}


def main() -> None:
  args = peers.parser(__doc__).parse_args()
  with tempfile.TemporaryDirectory() as directory:
    sshd = LoopbackSshd(pathlib.Path(directory))
    sshd.start()
    hosts = sshd.hosts()
    hosts["groups"] = {"echo": "alpha", "caller": "beta"}
    setups = {
      "multiprocess": dict(launch_type="multiprocess", terminal="output_to_files"),
      "ssh": dict(launch_type="ssh", hosts=hosts),
      "ssh+tls": dict(launch_type="ssh", hosts=hosts, tls=True),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    try:
      for _ in range(args.runs):
        for name, setup in setups.items():  # interleaved: noise hits every side alike
          results[name].append(run_once(**setup))
    finally:
      sshd.stop()
  print(f"\nmedians of {args.runs} runs; ssh: caller on {HOSTS['beta']}, echo on {HOSTS['alpha']}")
  medians = {
    name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for name, runs in results.items()
  }
  print(f"{'':14} {'sync RTT us':>12} {'16 MiB echo GB/s':>17}")
  for name, figures in medians.items():
    print(f"{name:14} {figures['sync_rtt_us']:12.1f} {figures['echo_16mib_gbps']:17.3f}")
  base = medians["multiprocess"]
  for name in ("ssh", "ssh+tls"):
    rtt = medians[name]["sync_rtt_us"] / base["sync_rtt_us"]
    gbps = medians[name]["echo_16mib_gbps"] / base["echo_16mib_gbps"]
    print(f"{name} / multiprocess: RTT {rtt:.2f}x, echo throughput {gbps:.2f}x")


if __name__ == "__main__":
  main()

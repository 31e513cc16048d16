"""Do the courier and replay goals hold in every run, and under load?

Five figures, each measured side by side with its peer, `--rounds`
interleaved rounds (the side that goes first alternates), then for each the
median and spread (min-max) of each side, and the ratio of the medians:

  futures   pipelined futures, consumer -> producer, 1 + 32 local_mp
  sync      consumer -> producer sync call round trip, 1 + 32 local_mp
  echo16    16 MiB `bytes` echo, 1 + 32 local_mp
            (these three: ../shared/anchors/lp_program_bench.py --n=32, the
            same unchanged script run by each side's interpreter)
  writer    trajectory-writer insert, one item per step, 84x84x4 uint8
  writer4   the same, 4 x float32
            (peer: ../shared/anchors/reverb_bench.py, dm-reverb 0.7.2, its
            server in process and its client over localhost gRPC; ours: the
            same items, counts and table, a replay.Server in a spawned child
            process and the writer here over loopback TCP)

--load starts two busy-loop processes per core beside the benchmark for its
whole run (and ends them, by pid, when it ends), so both sides run on an
oversubscribed machine. --no-spin runs ours with the courier's busy-poll
off (LAUNCHPAD_COURIER_SPIN=0), to compare polling with plain blocking.

--only program (or writer) runs only those rows.

Usage: python bench/holds.py [--rounds 5] [--n 32] [--load] [--no-spin]
                             [--only program|writer] [--anchors DIR] [--peer-python PATH]
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import launch
import numpy as np
import peers
import replay as replay_bench

from launchpad import replay

PROGRAM_TIMEOUT = 300.0
REPLAY_TIMEOUT = 300.0
# name -> (unit, higher is better, goal on ours/peer, and what the goal is)
ROWS = {
  "futures": ("calls/s", True, 4.0),
  "sync": ("us", False, 0.25),
  "echo16": ("GB/s", True, 1.5),
  "writer": ("items/s", True, 1.2),
  "writer4": ("items/s", True, 1.5),
}
# Goals under --load (no figure worse than the peer's; the sync call <= 0.5x).
LOAD_GOALS = {"futures": 1.0, "sync": 0.5, "echo16": 1.0, "writer": 1.0, "writer4": 1.0}
# The anchor's items: label -> (shape, dtype, steps), as reverb_bench.py has them.
WRITER_ITEMS = {"writer4": ((4,), np.float32, 20_000), "writer": ((84, 84, 4), np.uint8, 3_000)}
BUSY_LOOP = "while True:\n  pass\n"


def run_program(python: str, script: pathlib.Path, n: int, env: dict[str, str]) -> dict[str, float]:
  """One run of the anchor program (1 consumer + n producers): its figures.

  It runs in a directory of its own, kept (and named) if the run reports
  nothing, so that its nodes' logs say why.
  """
  tag = uuid.uuid4().hex
  work = pathlib.Path(tempfile.mkdtemp(prefix="holds-"))
  out = work / "anchor.txt"
  run_env = dict(env)
  run_env.update(
    ANCHOR_OUT=str(out),
    LAUNCHPAD_HOME=str(work / "home"),  # ours: run directories
    LAUNCHPAD_LOGGING_DIR=f"{work / 'logs'}/",  # the peer's node logs
    LAUNCH_BENCH_TAG=tag,  # finds leftover processes afterwards
  )
  try:
    process = subprocess.run(
      [python, str(script), f"--n={n}"],
      cwd=work,  # not the repository: `import launchpad` must find each side's own
      env=run_env,
      stdin=subprocess.DEVNULL,
      capture_output=True,
      text=True,
      timeout=PROGRAM_TIMEOUT,
    )
    tail = process.stderr.splitlines()[-5:]
  except subprocess.TimeoutExpired:
    tail = [f"did not finish within {PROGRAM_TIMEOUT:.0f} s"]
  launch.kill_all(launch.leftovers(tag))
  m = re.search(r"rtt_us=(\S+) futures=(\S+) echo16=(\S+)", out.read_text() if out.exists() else "")
  if not m:
    print(f"  the program reported nothing; its logs are in {work}:", *tail, sep="\n    ")
    return {}
  shutil.rmtree(work, ignore_errors=True)
  rtt, futures, echo = map(float, m.groups())
  return {"sync": rtt, "futures": futures, "echo16": echo}


def writer_inserts(client: replay.Client, shape: tuple, dtype, steps: int) -> float:
  """items/s of the anchor's writer loop: one step, one item per step, one flush."""
  x = np.ones(shape, dtype)
  start = time.perf_counter()
  with client.trajectory_writer(num_keep_alive_refs=1) as writer:
    for _ in range(steps):
      writer.append({"obs": x})
      writer.create_item("t", 1.0, {"obs": writer.history["obs"][-1]})
    writer.flush()
  return steps / (time.perf_counter() - start)


def run_replay() -> dict[str, float]:
  """Our writer figures, a fresh server in a child process as the peer has a fresh one.

  This process writes as an actor node's would, which has frozen what its
  imports made (process_main: WorkerSpec.run) before it runs.
  """
  gc.freeze()
  figures = {}
  ctx = mp.get_context("spawn")
  for row, (shape, dtype, steps) in WRITER_ITEMS.items():
    queue = ctx.Queue()
    child = ctx.Process(target=replay_bench.serve, args=(queue,), daemon=True)
    child.start()
    try:
      address, secret = queue.get(timeout=REPLAY_TIMEOUT)
      client = replay.Client(address, secret=secret, timeout=REPLAY_TIMEOUT)
      figures[row] = writer_inserts(client, shape, dtype, steps)
      client.close()
      queue.put("stop")
      child.join(REPLAY_TIMEOUT)
    finally:
      if child.is_alive():
        child.kill()
        child.join(10)
  return figures


def run_peer_replay(python: str, script: pathlib.Path) -> dict[str, float]:
  found = peers.run_script(
    python, script, r"^ANCHOR reverb_insert_(\S+) (\S+) items/s", REPLAY_TIMEOUT
  )
  return {
    row: found[label]
    for row, label in (("writer4", "small"), ("writer", "atari"))
    if label in found
  }


def start_load() -> list[subprocess.Popen]:
  """Two busy-loop processes per core."""
  return [
    subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
    for _ in range(2 * (os.cpu_count() or 1))
  ]


def stop_load(load: list[subprocess.Popen]) -> None:
  for process in load:
    process.kill()
  for process in load:
    process.wait(10)


def spread(values: list[float]) -> str:
  """'median [min-max]'."""
  if not values:
    return "-"
  return f"{_num(statistics.median(values))} [{_num(min(values))}-{_num(max(values))}]"


def _num(value: float) -> str:
  return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def report(ours: list[dict], peer: list[dict], loaded: bool) -> None:
  print(f"\nmedians [min-max] of {len(ours)} interleaved rounds; load {_loadavg()}")
  header = f"{'figure':8s} {'unit':8s} {'ours':>28s} {'peer':>28s} {'ratio':>6s} {'goal':>7s}"
  print(header + "  held  ratio per round")
  for row, (unit, higher, goal) in ROWS.items():
    if loaded:
      goal = LOAD_GOALS[row]
    a = [r[row] for r in ours if row in r]
    b = [r[row] for r in peer if row in r]
    per_round = [x[row] / y[row] for x, y in zip(ours, peer, strict=False) if row in x and row in y]
    ratio = statistics.median(a) / statistics.median(b) if a and b else None
    held = (
      "-" if ratio is None else ("yes" if (ratio >= goal if higher else ratio <= goal) else "no")
    )
    sign = ">=" if higher else "<="
    print(
      f"{row:8s} {unit:8s} {spread(a):>28s} {spread(b):>28s} "
      f"{'-' if ratio is None else format(ratio, '.2f'):>6s} {sign + ' ' + format(goal, 'g'):>7s}"
      f"  {held:4s}  {' '.join(f'{r:.2f}' for r in per_round)}",
      flush=True,
    )


def _loadavg() -> str:
  return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
  parser = peers.parser(__doc__)
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each side")
  parser.add_argument("--n", type=int, default=32, help="producers of the program bench")
  parser.add_argument("--load", action="store_true", help="two busy loops per core beside it")
  parser.add_argument("--no-spin", action="store_true", help="ours without the busy-poll")
  parser.add_argument(
    "--only", choices=("program", "writer"), help="only the program rows, or the writer rows"
  )
  args = parser.parse_args()

  program_script = args.anchors / "lp_program_bench.py"
  replay_script = args.anchors / "reverb_bench.py"
  have_peer = pathlib.Path(args.peer_python).exists() and program_script.exists()
  if not have_peer:
    print(f"peer skipped: no {args.peer_python} or no {program_script}", flush=True)
  our_env = dict(os.environ)
  if args.no_spin:
    our_env["LAUNCHPAD_COURIER_SPIN"] = "0"
    os.environ["LAUNCHPAD_COURIER_SPIN"] = "0"  # the replay server child and this client
  load = start_load() if args.load else []
  print(
    f"load at start {_loadavg()}; {len(load)} busy loops; {peers.interpreter_speed()}", flush=True
  )
  ours: list[dict] = []
  peer: list[dict] = []
  try:
    for i in range(args.rounds):
      sides = [("ours", ours), ("peer", peer)] if have_peer else [("ours", ours)]
      if i % 2:
        sides.reverse()
      for name, results in sides:
        figures = {}
        if name == "ours":
          if args.only != "writer":
            figures.update(run_program(sys.executable, program_script, args.n, our_env))
          if args.only != "program":
            figures.update(run_replay())
        else:
          if args.only != "writer":
            figures.update(run_program(args.peer_python, program_script, args.n, dict(os.environ)))
          if args.only != "program" and replay_script.exists():
            figures.update(run_peer_replay(args.peer_python, replay_script))
        results.append(figures)
        print(f"round {i + 1}/{args.rounds} {name}: {launch.fmt(figures)}", flush=True)
  finally:
    stop_load(load)
  report(ours, peer, args.load)


if __name__ == "__main__":
  main()

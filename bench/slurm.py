"""Launch figures of the Slurm launcher, against the same program in multiprocess mode.

The program has the anchors' shape (1 consumer + N echo CourierNodes, the
consumer calls each producer once): `ready` is the time from starting
`lp launch` (the command, interpreter start included) until the consumer
has reached every producer, for N = 8 and 32, `--runs` interleaved runs per
mode, medians reported. The cluster is the tests' real single-host Slurm
(tests/slurm.py: munged, slurmctld and slurmd on loopback), so the figures
are Slurm's own costs (job submission, step creation, one fresh interpreter
per node) on this machine, without a network.

Two figures decided the launcher's shape (docs/design.md, "Slurm"):

  job start   seconds from sbatch until squeue says RUNNING, for a plain job
              and for a heterogeneous job of two components (one per group),
              which only Slurm's backfill scheduler starts.
  steps       in one job of K tasks, K steps of one task each started at once
              (`srun --ntasks=1 --exact`, one per node) against one step of K
              tasks (`srun --ntasks=K`, one per group), each task importing
              launchpad.

Usage: python bench/slurm.py [--runs 3]
Needs Slurm's daemons and commands (apt-get install slurmctld slurmd slurm-client munge).
"""

from __future__ import annotations

import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import peers

sys.path.insert(0, str(peers.ROOT))
from tests.slurm import LoopbackSlurm  # the repository's test cluster

SIZES = (8, 32)
MODES = ("multiprocess", "slurm")
TIMEOUT = 300.0
HETJOB_TIMEOUT = 60.0
POLL_SECONDS = 0.05

PROGRAM = '''\
"""1 consumer + N echo producers; prints READY once the consumer reached them all."""
import os
import time

from absl import app, flags

import launchpad as lp

N = flags.DEFINE_integer("n", 8, "producers")
T0 = float(os.environ["BENCH_T0"])


class Echo:
  def ping(self, x):
    return x


class Consumer:
  def __init__(self, producers):
    self._producers = producers

  def run(self):
    for producer in self._producers:
      producer.ping(0)
    print(f"READY {time.time() - T0:.3f}", flush=True)
    lp.stop()


def main(_):
  program = lp.Program("bench")
  with program.group("producer"):
    handles = [program.add_node(lp.CourierNode(Echo)) for _ in range(N.value)]
  program.add_node(lp.CourierNode(Consumer, handles), label="consumer")
  lp.launch(program)


if __name__ == "__main__":
  app.run(main)
'''


def ready(cluster: LoopbackSlurm, script: pathlib.Path, mode: str, n: int, home: str) -> float:
  """Seconds from starting `lp launch` until the consumer reached every producer."""
  env = {**cluster.environment(), "LAUNCHPAD_HOME": home}
  lp = pathlib.Path(sys.executable).with_name("lp")
  env["BENCH_T0"] = repr(time.time())  # the consumer's clock is this machine's too
  result = subprocess.run(
    [str(lp), "launch", f"--mode={mode}", str(script), "--", f"--n={n}"],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env=env,
  )
  found = re.search(r"READY (\S+)", result.stdout)
  if result.returncode != 0 or not found:
    raise RuntimeError(f"{mode} n={n}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return float(found[1])


def job_start(cluster: LoopbackSlurm, *sbatch: str) -> float | None:
  """Seconds from sbatch until the job runs; None if not within HETJOB_TIMEOUT."""
  start = time.monotonic()
  submitted = cluster.run(
    "sbatch", "--parsable", "--output=/dev/null", "--mem=100", "--wrap=sleep 300", *sbatch
  )
  job = submitted.stdout.strip().split(";")[0]
  try:
    while time.monotonic() - start < HETJOB_TIMEOUT:
      states = cluster.run("squeue", "--noheader", f"--jobs={job}", "--format=%T").stdout.split()
      if states and all(state == "RUNNING" for state in states):
        return time.monotonic() - start
      time.sleep(POLL_SECONDS)
    return None
  finally:
    cluster.run("scancel", job)


def steps(cluster: LoopbackSlurm, tasks: int) -> tuple[float, float]:
  """(K steps of one task, one step of K tasks): seconds until all have run."""
  job = cluster.run(
    "sbatch", "--parsable", "--output=/dev/null", f"--ntasks={tasks}", "--wrap=sleep 300"
  ).stdout.strip()
  env = cluster.environment()
  command = [sys.executable, "-c", "import launchpad"]
  try:
    while (
      cluster.run("squeue", "--noheader", f"--jobs={job}", "--format=%T").stdout.strip()
      != "RUNNING"
    ):
      time.sleep(POLL_SECONDS)
    start = time.monotonic()
    each = [
      subprocess.Popen(["srun", f"--jobid={job}", "--ntasks=1", "--exact", *command], env=env)
      for _ in range(tasks)
    ]
    if any(p.wait(TIMEOUT) for p in each):
      raise RuntimeError("a step failed")
    per_node = time.monotonic() - start
    start = time.monotonic()
    subprocess.run(["srun", f"--jobid={job}", f"--ntasks={tasks}", *command], env=env, check=True)
    per_group = time.monotonic() - start
  finally:
    cluster.run("scancel", job)
  return per_node, per_group


def main() -> None:
  args = peers.parser(__doc__).parse_args()
  with tempfile.TemporaryDirectory() as directory:
    work = pathlib.Path(directory)
    script = work / "slurm_bench_program.py"
    script.write_text(PROGRAM)
    (work / "cluster").mkdir()
    cluster = LoopbackSlurm(work / "cluster")
    cluster.start()
    try:
      plain = job_start(cluster, "--ntasks=1")
      het = job_start(cluster, "--ntasks=1", ":", "--ntasks=2", "--mem=100")
      print(
        f"job start: plain job {plain:.2f} s; heterogeneous job of 2 components: "
        f"{f'{het:.2f} s' if het is not None else f'not started within {HETJOB_TIMEOUT:.0f} s'}"
      )
      for tasks in SIZES:
        per_node, per_group = steps(cluster, tasks + 1)
        print(
          f"steps, {tasks + 1} tasks: one step per node {per_node:.2f} s, one step of all "
          f"{per_group:.2f} s"
        )
      results: dict[tuple[str, int], list[float]] = {(m, n): [] for m in MODES for n in SIZES}
      for run in range(args.runs):
        for n in SIZES:
          for mode in MODES:  # interleaved: noise hits both modes alike
            home = str(work / f"home-{run}")
            results[mode, n].append(ready(cluster, script, mode, n, home))
    finally:
      cluster.stop()
  print(
    f"\nready (s from `lp launch` to the consumer reaching every producer), medians of {args.runs}"
  )
  print(f"{'':14}" + "".join(f"{f'1+{n}':>10}" for n in SIZES))
  for mode in MODES:
    print(f"{mode:14}" + "".join(f"{statistics.median(results[mode, n]):10.2f}" for n in SIZES))
  for n in SIZES:
    runs = " ".join(f"{x:.2f}" for x in results["slurm", n])
    print(
      f"slurm 1+{n} runs: {runs}; multiprocess: {' '.join(f'{x:.2f}' for x in results['multiprocess', n])}"
    )


if __name__ == "__main__":
  main()

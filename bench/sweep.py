"""Sweep figures: early stopping on the DQN sweep, and per-trial overhead
side by side with Ray Tune.

1. The DQN sweep (examples/dqn/trial.py over examples/dqn/sweep.toml: 18
   trials on the grid, 2 at once, multiprocess) run by `lp sweep`, without
   early stopping and with each pruner of PRUNERS (--variants), for each
   grid order (--sampler-seed 0, 1, ...; every variant goes through the same
   order, one after the other, before the next order):

     whole      wall time of the `lp sweep` command, start to exit
     to 195     seconds from the sweep's start until a trial's evaluator
                reported a mean return of 195 or more (from the trials'
                metrics.jsonl): when a configuration that reaches 195 was found
     wait       of those, the seconds before that trial started (the only
                part early stopping can shorten: the trial itself runs as
                it would without); the rest is the trial's own time to 195
     best       the best trial's return, and how many trials were pruned
     first good the number of the first trial with learning rate 1e-3 (the
                only one that reaches 195 within the budget): where the
                order puts it

2. Per-trial overhead on a trial that does nothing but report: its function
   reports `score` at 5 steps and returns. Ours runs it as a one-node program
   in multiprocess mode (one node process per trial) through lp.sweep; Ray
   Tune runs the same function as a function trainable (one actor process per
   trial) through tune.Tuner, with Ray's defaults; both `--trials` trials of a
   grid, 2 at once, timed in the driver process:

     launch -> first report   from the sweep starting the trial (ours: before
                              the factory runs; Ray: on_trial_start) to its
                              first report arriving in the driver
     end -> next report       from a trial's end arriving in the driver to the
                              first report of the next trial to start

   Ray is started (ray.init) before its clock starts; its start-up is not
   counted.

Usage: python bench/sweep.py [--orders 5] [--variants none,median,asha,asha2000,rerank,asha2000half,patient,hyperband] [--trials 20] [--runs 3]
                             [--skip-dqn] [--skip-ray]
Needs the [sweep], [examples] and ray[tune] extras (pip install 'ray[tune]').
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import peers

ROOT = pathlib.Path(__file__).resolve().parents[1]
DQN_TRIAL = ROOT / "examples" / "dqn" / "trial.py"
DQN_SPACE = ROOT / "examples" / "dqn" / "sweep.toml"
TARGET = 195.0
STEPS = 5  # reports of the overhead trial
GOOD_LEARNING_RATE = 1e-3
# The early stopping of each variant: `lp sweep` options.
PRUNERS = {
  "none": [],
  # Stops a trial below the median of the complete trials at the same step,
  # once two trials are complete and from 3,000 steps on.
  "median": [
    *("--pruner", "median"),
    *("--pruner-arg", "n_startup_trials=2"),
    *("--pruner-arg", "n_warmup_steps=3000"),
  ],
  # Successive halving: at 4,000 and 12,000 steps a trial goes on only if it
  # is in the best third of the trials that reached that step (the first
  # trials to get there: the best so far); no trial need complete first.
  "asha": [
    *("--pruner", "asha"),
    *("--pruner-arg", "min_resource=4000"),
    *("--pruner-arg", "reduction_factor=3"),
  ],
  # The same with its first rung at 2,000 steps: the first two trials to get
  # there are compared sooner, so a slot is freed sooner.
  "asha2000": [
    *("--pruner", "asha"),
    *("--pruner-arg", "min_resource=2000"),
    *("--pruner-arg", "reduction_factor=3"),
  ],
  # asha2000 ranking each trial again at every report, at the highest rung
  # it has passed: the first trials to reach a rung, promoted for having no
  # one to be compared with, are stopped once later ones beat them there.
  "rerank": [
    *("--pruner", "asha"),
    *("--pruner-arg", "min_resource=2000"),
    *("--pruner-arg", "reduction_factor=3"),
    *("--pruner-arg", "rerank=true"),
  ],
  # asha2000 keeping the best half at each rung (2,000, 4,000, 8,000 and
  # 16,000 steps) instead of the best third: fewer good configurations stopped
  # for a noisy early return, more losers kept a rung longer.
  "asha2000half": [
    *("--pruner", "asha"),
    *("--pruner-arg", "min_resource=2000"),
    *("--pruner-arg", "reduction_factor=2"),
  ],
  # asha2000 with patience 1: a trial the rung would stop goes on while its
  # best of its last two reports is as good as its best before them, so a
  # good configuration that is still climbing is not stopped for an early
  # noisy value, and a loser is stopped at its first report past its peak.
  "patient": [
    *("--pruner", "asha"),
    *("--pruner-arg", "min_resource=2000"),
    *("--pruner-arg", "reduction_factor=3"),
    *("--pruner-arg", "patience=1"),
  ],
  # Hyperband over those rungs: brackets of successive halving from 2,000,
  # 6,000 and 18,000 steps, each trial in one (compared only within it), so
  # a noisy early rung stops only the trials of the first bracket.
  "hyperband": [
    *("--pruner", "hyperband"),
    *("--pruner-arg", "min_resource=2000"),
    *("--pruner-arg", "max_resource=20000"),
    *("--pruner-arg", "reduction_factor=3"),
  ],
}


def dqn_sweep(home: pathlib.Path, order: int, variant: str) -> dict:
  """One `lp sweep` of the DQN; its figures."""
  name = f"dqn-{variant}-{order}"
  command = [sys.executable, "-m", "launchpad.cli", "sweep", str(DQN_TRIAL), "--space"]
  command += [str(DQN_SPACE), "--name", name, "--objective", "mean_return", "--parallel", "2"]
  command += ["--sampler-seed", str(order), *PRUNERS[variant]]
  env = {**os.environ, "LAUNCHPAD_HOME": str(home)}
  start = time.time()
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
  whole = time.time() - start
  if done.returncode != 0:
    raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
  directory = home / "sweeps" / name
  status = json.loads((directory / "status.json").read_text())
  reached = []  # (seconds into the sweep, trial number)
  for metrics in directory.glob("trials/*/metrics.jsonl"):
    for line in metrics.read_text().splitlines():
      report = json.loads(line)
      if isinstance(report.get("mean_return"), float) and report["mean_return"] >= TARGET:
        reached.append((report["time"] - status["started"], int(metrics.parent.name)))
  wait = None
  if reached:
    wait = launched(directory, name, min(reached)[1]) - status["started"]
  best = status["best"]
  good = [r["number"] for r in status["rows"] if r["params"]["learning_rate"] == GOOD_LEARNING_RATE]
  return {
    "whole": whole,
    "to_target": min(reached)[0] if reached else None,
    "wait": wait,
    "best": best["value"] if best else None,
    "pruned": status["counts"].get("pruned", 0),
    "first_good": min(good, default=None),
  }


def launched(directory: pathlib.Path, name: str, number: int) -> float:
  """When the sweep started trial `number` (time.time()), from its study."""
  import optuna

  study = optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'study.db'}")
  return study.trials[number].user_attrs["times"]["launched"]


def report_steps(x: float) -> None:
  """The overhead trial's work: STEPS reports, nothing else."""
  import launchpad as lp

  for step in range(STEPS):
    lp.report(step=step, score=x * step)


def overhead_program(x: float):
  import launchpad as lp

  program = lp.Program("overhead")
  program.add_node(lp.PyNode(report_steps, x), label="trial")
  return program


def gaps(trials: list[dict]) -> tuple[list[float], list[float]]:
  """launch -> first report, and end -> the next trial's first report, from
  each trial's `launched`, `reported` and `ended` times."""
  first = [t["reported"] - t["launched"] for t in trials]
  ends = sorted(t["ended"] for t in trials)
  starts = sorted(t["reported"] for t in trials)
  # The k-th trial to end frees the slot of the (k + parallel)-th trial to report.
  after = [start - end for end, start in zip(ends, starts[2:], strict=False)]
  return first, after


def ours_overhead(home: pathlib.Path, trials: int, run: int) -> tuple[list[float], list[float]]:
  import launchpad as lp

  os.environ["LAUNCHPAD_HOME"] = str(home)
  result = lp.sweep(
    overhead_program,
    {"x": list(range(trials))},
    parallel=2,
    launch_type="local_mp",
    objective="score",
    name=f"overhead-{run}",
    out=open(os.devnull, "w"),  # for the process's lifetime
  )
  import optuna

  study = optuna.load_study(
    study_name=result.name, storage=f"sqlite:///{result.directory / 'study.db'}"
  )
  return gaps([t.user_attrs["times"] for t in study.trials])


def ray_overhead(trials: int, storage: pathlib.Path) -> tuple[list[float], list[float]]:
  # Ray imported through launchpad's Ray launcher, which sets Ray's loopback
  # switch for the import: the instance below listens on loopback only.
  from launchpad.launch import ray as ray_launcher

  ray = ray_launcher.ray
  from ray import tune

  times: dict[str, dict] = {}

  class Timer(tune.Callback):
    def on_trial_start(self, iteration, trials, trial, **info):
      times.setdefault(trial.trial_id, {})["launched"] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
      times[trial.trial_id].setdefault("reported", time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):
      times[trial.trial_id]["ended"] = time.time()

  def trainable(config):
    for step in range(STEPS):
      tune.report({"score": config["x"] * step})

  if not ray.is_initialized():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  tuner = tune.Tuner(
    trainable,
    param_space={"x": tune.grid_search(list(range(trials)))},
    tune_config=tune.TuneConfig(max_concurrent_trials=2, metric="score", mode="max"),
    run_config=tune.RunConfig(callbacks=[Timer()], storage_path=str(storage), verbose=0),
  )
  tuner.fit()
  return gaps(list(times.values()))


def median(values: list[float]) -> float:
  return statistics.median(values) if values else float("nan")


def dqn(home: pathlib.Path, orders: int, variants: list[str]) -> None:
  """The DQN sweep of every variant in every order; a line per sweep, then
  each variant's medians and its time to 195 as a share of the full grid's."""
  unknown = sorted(set(variants) - set(PRUNERS))
  if unknown:
    raise SystemExit(f"--variants: no {', '.join(unknown)}; choose of {', '.join(PRUNERS)}")
  print(f"DQN sweep, 18 trials, 2 at once; load average {os.getloadavg()[0]:.1f} at start")
  print(f"{'order':>5} {'pruner':>7} {'whole s':>8} {'to 195 s':>9} {'wait s':>7} {'best':>6} "
        f"{'pruned':>6} {'first good':>10} {'load':>5}")  # fmt: skip
  figures: dict[str, list[dict]] = {variant: [] for variant in variants}
  for order in range(orders):
    for variant in variants:
      f = dqn_sweep(home, order, variant)
      figures[variant].append(f)
      to = "-" if f["to_target"] is None else f"{f['to_target']:.1f}"
      wait = "-" if f["wait"] is None else f"{f['wait']:.1f}"
      best = "-" if f["best"] is None else f"{f['best']:.0f}"
      print(
        f"{order:>5} {variant:>7} {f['whole']:>8.1f} {to:>9} {wait:>7} {best:>6} {f['pruned']:>6} "
        f"{f['first_good']!s:>10} {os.getloadavg()[0]:>5.1f}",
        flush=True,
      )
  full = figures.get("none")
  for variant, rows in figures.items():
    reached = [r["to_target"] for r in rows if r["to_target"] is not None]
    line = (
      f"median {variant:>6}: whole {median([r['whole'] for r in rows]):.1f} s, to 195 "
      f"{median(reached):.1f} s ({len(reached)}/{len(rows)} reached it)"
    )
    if full is not None and variant != "none":
      whole = [r["whole"] / f["whole"] for r, f in zip(rows, full, strict=True)]
      to = [
        r["to_target"] / f["to_target"]
        for r, f in zip(rows, full, strict=True)
        if r["to_target"] is not None and f["to_target"] is not None
      ]
      line += (
        f"; of the full grid's, per order: whole {', '.join(f'{x:.2f}' for x in whole)}, "
        f"to 195 {', '.join(f'{x:.2f}' for x in to)} (medians {median(whole):.2f}, "
        f"{median(to):.2f})"
      )
    print(line, flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--orders", type=int, default=5, help="grid orders of the DQN sweep")
  parser.add_argument(
    "--variants", default=",".join(PRUNERS), help=f"of {', '.join(PRUNERS)}, comma-separated"
  )
  parser.add_argument("--trials", type=int, default=20, help="trials of each overhead sweep")
  parser.add_argument("--runs", type=int, default=3, help="overhead sweeps per side")
  parser.add_argument("--skip-dqn", action="store_true")
  parser.add_argument("--skip-ray", action="store_true")
  args = parser.parse_args()
  print(peers.interpreter_speed(), flush=True)
  with tempfile.TemporaryDirectory() as temporary:
    home = pathlib.Path(temporary)
    if not args.skip_dqn:
      dqn(home, args.orders, args.variants.split(","))
    print(f"\noverhead, {args.trials} trials, 2 at once, {args.runs} sweeps per side (medians, ms)")
    sides = {"ours (multiprocess)": lambda run: ours_overhead(home, args.trials, run)}
    if not args.skip_ray:
      sides["Ray Tune"] = lambda run: ray_overhead(args.trials, home / f"ray-{run}")
    results = {}
    for side, measure in sides.items():
      first, after = [], []
      for run in range(args.runs):
        a, b = measure(run)
        first += a
        after += b
      results[side] = (median(first) * 1000, median(after) * 1000)
      print(f"{side:>20}: launch -> first report {results[side][0]:.0f}, end -> next report "
            f"{results[side][1]:.0f}", flush=True)  # fmt: skip
    if "Ray Tune" in results:
      ours, ray = results["ours (multiprocess)"], results["Ray Tune"]
      print(f"ratio ours / Ray Tune: {ours[0] / ray[0]:.2f} and {ours[1] / ray[1]:.2f}")


if __name__ == "__main__":
  main()

"""Trial programs of the sweep tests.

Every run of a trial's node leaves a file `<runs_dir>/x=<x>-<random>`
holding its pid, so tests count how often each configuration ran; a node
may wait for a gate file, so tests catch a sweep mid-way. Every wait is
bounded (WAIT_SECONDS): a node never outlives a failed test for long.

  lp sweep tests/sweep/programs.py --space SPACE.toml
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid

import launchpad as lp

WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05


def mark(runs_dir: str, x: float) -> pathlib.Path:
  """Records a run of the configuration `x`: a new file holding the node's pid."""
  path = pathlib.Path(runs_dir) / f"x={x:g}-{uuid.uuid4().hex[:8]}"
  path.write_text(str(os.getpid()))
  return path


def wait_for_file(path: str) -> bool:
  """Waits for `path` to exist, at most WAIT_SECONDS, ending early if the
  program stops; True if it exists."""
  for _ in range(int(WAIT_SECONDS / POLL_SECONDS)):
    if os.path.exists(path):
      return True
    if lp.wait_for_stop(POLL_SECONDS):
      return False
  return os.path.exists(path)


def scores(runs_dir: str, x: float, steps: int, gate_x: float, gate: str, fail_x: float) -> None:
  """Reports score = x * (step + 1) at steps 0..steps-1; the run with x ==
  gate_x first waits for the gate file; the one with x == fail_x raises."""
  mark(runs_dir, x)
  if x == gate_x and not wait_for_file(gate):
    return
  if x == fail_x:
    raise ValueError(f"boom at x={x:g}")
  print(f"x={x:g} scores", flush=True)
  for step in range(steps):
    lp.report(step=step, score=x * (step + 1), other=-step)


def make_program(
  x: float,
  runs_dir: str,
  seed: int = 0,
  steps: int = 3,
  gate_x: float = -1.0,
  gate: str = "",
  fail_x: float = -1.0,
) -> lp.Program:
  """One node reporting `score` (see `scores`)."""
  program = lp.Program("scores")
  program.add_node(lp.PyNode(scores, runs_dir, x, steps, gate_x, gate, fail_x), label="worker")
  return program


def first_wins(runs_dir: str, x: float, seed: int) -> None:
  """Trial 0 (seed 0) scores 1 at steps 0 and 1 and ends; every later trial
  scores -seed, starts a child process, writes both pids to
  `<runs_dir>/pids-<seed>` and waits for the program to stop."""
  mark(runs_dir, x)
  if seed == 0:
    for step in range(2):
      lp.report(step=step, score=1.0)
    return
  child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({WAIT_SECONDS})"])
  (pathlib.Path(runs_dir) / f"pids-{seed}").write_text(f"{os.getpid()} {child.pid}")
  for step in range(2):
    lp.report(step=step, score=-float(seed))
  if not lp.wait_for_stop(WAIT_SECONDS):
    (pathlib.Path(runs_dir) / f"not-stopped-{seed}").write_text("")


def make_pruned(x: float, runs_dir: str, seed: int) -> lp.Program:
  """One node (see `first_wins`): every trial after the first is a loser."""
  program = lp.Program("pruned")
  program.add_node(lp.PyNode(first_wins, runs_dir, x, seed), label="worker")
  return program


def rising(seed: int) -> None:
  """Scores at steps 0-3: trial 0 (seed 0) 10 each time; later trials worse
  than it at every step: odd seeds rising (0, 1, 2, 3), even ones falling
  back after a peak (0, 3, 2, 1)."""
  curve = [10.0] * 4 if seed == 0 else [0.0, 1.0, 2.0, 3.0] if seed % 2 else [0.0, 3.0, 2.0, 1.0]
  for step, score in enumerate(curve):
    lp.report(step=step, score=score)


def make_rising(x: float, seed: int) -> lp.Program:
  """One node (see `rising`)."""
  program = lp.Program("rising")
  program.add_node(lp.PyNode(rising, seed), label="worker")
  return program


def make_without_seed(x: float, runs_dir: str) -> lp.Program:
  """A factory without a seed parameter: trials do not pass one."""
  return make_program(x, runs_dir)


def make_nothing(x: float) -> str:
  """Not a factory: returns no program."""
  return f"x={x}"

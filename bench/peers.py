"""What the benchmarks share: the peers' scripts and environment, and medians.

The peers' scripts are `../shared/anchors/*.py`, run with the reference
environment that `anchors/setup_anchor_venvs.sh` builds under $ANCHOR_DIR.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import tempfile
import timeit

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parser(doc: str) -> argparse.ArgumentParser:
  """An argument parser with --runs, --anchors and --peer-python."""
  result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  result.add_argument("--runs", type=int, default=3, help="interleaved runs of each side")
  result.add_argument("--anchors", type=pathlib.Path, default=ROOT.parent / "shared" / "anchors")
  anchor_dir = pathlib.Path(os.environ.get("ANCHOR_DIR", "/tmp/anchor-venvs"))
  result.add_argument("--peer-python", default=str(anchor_dir / "lpref" / "bin" / "python"))
  return result


def interpreter_speed() -> str:
  """How quick this interpreter is on this machine now, to tell a slow
  machine from a slow change when runs of different days differ: the best of
  five timings of sum(range(1000)) (a quick desktop: 5-8 us)."""
  best = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000
  return f"interpreter: sum(range(1000)) {best * 1e6:.1f} us"


def run_script(python: str, script: pathlib.Path, pattern: str, timeout: float) -> dict[str, float]:
  """Runs a peer's script and parses the (name, value) pairs `pattern` finds.

  It runs from an empty directory, so that the peer's `import launchpad` does
  not find this project; it is cut at `timeout` (the peer's courier never
  returns from a call with a numpy argument) and what it printed is used.
  """
  with tempfile.TemporaryDirectory() as cwd:
    try:
      out = subprocess.run(
        [python, str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout
      ).stdout
    except subprocess.TimeoutExpired as e:
      out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
  figures = {}
  for name, value in re.findall(pattern, out, re.M):
    try:
      figures[name] = float(value)
    except ValueError:
      continue
  return figures


def median_of(runs: list[dict]) -> dict[str, float]:
  """The median of each numeric figure over the runs that have it."""
  keys = {k for run in runs for k, v in run.items() if isinstance(v, float)}
  return {
    k: statistics.median(r[k] for r in runs if isinstance(r.get(k), float)) for k in sorted(keys)
  }

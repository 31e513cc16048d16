"""Fixtures of the sweep tests: a temporary $LAUNCHPAD_HOME, `lp sweep`
processes, and a marker in the environment of every process they start."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Callable

import psutil
import pytest

from tests.child_process import Child

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAMS = ROOT / "tests" / "sweep" / "programs.py"
MARKER = "LAUNCHPAD_TEST_MARKER"
# Bound on every wait: a healthy tiny sweep takes seconds, a loaded 2-core
# machine may take many times that.
TIMEOUT = 180.0


@pytest.fixture(autouse=True)
def launchpad_home(tmp_path, monkeypatch) -> pathlib.Path:
  """Sweeps and runs go to a temporary home, never the real one."""
  home = tmp_path / "lphome"
  monkeypatch.setenv("LAUNCHPAD_HOME", str(home))
  return home


@pytest.fixture
def marker() -> str:
  """A value in the environment of every process a test's `lp` starts."""
  return uuid.uuid4().hex


@pytest.fixture
def runs_dir(tmp_path) -> pathlib.Path:
  """Where trial nodes leave a file per run (programs.mark)."""
  path = tmp_path / "runs"
  path.mkdir()
  return path


@pytest.fixture
def lp(launchpad_home, marker):
  """Starts `lp` commands (in sessions of their own); kills those still
  running at teardown."""
  started: list[Child] = []
  env = {**os.environ, "LAUNCHPAD_HOME": str(launchpad_home), MARKER: marker}

  def start(*args: str) -> Child:
    command = [sys.executable, "-m", "launchpad.cli", *map(str, args)]
    started.append(Child(command, TIMEOUT, env=env, cwd=ROOT, start_new_session=True))
    return started[-1]

  yield start
  for child in started:
    child.kill()


def write_space(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  return path


def runs_of(runs_dir: pathlib.Path) -> dict[str, int]:
  """How many times each configuration ran: `x=<x>` -> count."""
  counts: dict[str, int] = {}
  for path in runs_dir.glob("x=*"):
    key = path.name.rsplit("-", 1)[0]
    counts[key] = counts.get(key, 0) + 1
  return counts


def status_of(home: pathlib.Path, name: str) -> dict:
  """The sweep's status.json ({} until it is written)."""
  try:
    return json.loads((home / "sweeps" / name / "status.json").read_text())
  except (OSError, ValueError):
    return {}


def wait_until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> object:
  """Waits for `condition()` to be true (checked every 50 ms), at most `timeout` s."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.05)
  pytest.fail(f"{what} did not happen within {timeout} s")


def processes_with(marker: str, but: tuple[int, ...] = ()) -> list[psutil.Process]:
  """Every process whose environment holds the marker, except `but`."""
  found = []
  for process in psutil.process_iter():
    try:
      if process.pid not in but and process.environ().get(MARKER) == marker:
        found.append(process)
    except psutil.Error:
      continue
  return found


def assert_gone(pids: list[int], timeout: float = 30.0) -> None:
  """Every process in `pids` ends within `timeout` seconds."""
  processes = []
  for pid in pids:
    try:
      processes.append(psutil.Process(pid))
    except psutil.NoSuchProcess:
      continue
  _, alive = psutil.wait_procs(processes, timeout=timeout)
  assert not alive, f"processes left behind: {[p.pid for p in alive]}"

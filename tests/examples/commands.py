"""Running an example the way a user does, as a command."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_ok(command: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
  """Runs `command` from the repository's root; its stdout, once it exited with 0."""
  try:
    result = subprocess.run(
      command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"{' '.join(command)} did not end within {timeout} s: {e}")
  assert result.returncode == 0, (
    f"{' '.join(command)} exited with {result.returncode}.\n"
    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  )
  return result.stdout

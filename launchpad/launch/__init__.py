"""`lp.launch`: turn a program into running workers with a chosen launcher."""

from __future__ import annotations

from typing import Any

from launchpad import flags
from launchpad.launch import plan as plan_lib
from launchpad.launch import test, threads
from launchpad.launch.controller import Controller
from launchpad.program import Program

# Launchpad's names, and ours, for each launcher.
_ALIASES = {
  "local_mt": "threads",
  "threads": "threads",
  "test_mt": "test",
  "test": "test",
}
_LATER = {"local_mp", "multiprocess", "test_mp", "ssh", "ray"}


def launch(
  program: Program,
  launch_type: str | flags.LaunchType | None = None,
  *,
  test_case: Any = None,
  grace_period: float = 10.0,
  serialize_py_nodes: bool | None = None,
  local_resources: dict[str, Any] | None = None,
  terminal: str | None = None,
) -> Controller:
  """Runs `program` and returns its controller without waiting for it.

  Args:
    program: the program to run.
    launch_type: 'threads' ('local_mt') or 'test' ('test_mt'); defaults to
      the `--lp_launch_type` flag, else threads.
    test_case: a unittest.TestCase whose cleanup stops the program (test).
    grace_period: seconds nodes get to end after a stop before being forced.
    serialize_py_nodes: check that every node can be pickled, as it must
      be to run in another process (default True; threads-only programs may
      pass False to share unpicklable objects).
    local_resources: per-group settings of process launchers; accepted here
      so that programs written for them run unchanged.
    terminal: accepted for compatibility with Launchpad; output always goes
      to this process's terminal.
  """
  del local_resources, terminal  # meaningful to process launchers only
  kind = launch_type.value if isinstance(launch_type, flags.LaunchType) else launch_type
  kind = kind or flags.default_launch_type()
  name = _ALIASES.get(kind)
  if name is None:
    known = ", ".join(sorted(_ALIASES))
    if kind in _LATER:
      raise NotImplementedError(f"launch type {kind!r} is not available yet; use one of: {known}.")
    raise ValueError(f"unknown launch type {kind!r}; use one of: {known}.")
  if not isinstance(program, Program):
    raise TypeError(f"lp.launch takes a lp.Program, got {program!r}.")
  plan = plan_lib.make_plan(program, serialize=serialize_py_nodes is not False)
  if name == "test":
    return test.launch(plan, grace_period, test_case)
  return threads.launch(plan, grace_period)

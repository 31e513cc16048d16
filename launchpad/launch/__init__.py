"""`lp.launch`: turn a program into running workers with a chosen launcher."""

from __future__ import annotations

import pathlib
from typing import Any

from launchpad import flags
from launchpad.launch import plan as plan_lib
from launchpad.launch import processes, test, threads
from launchpad.launch.controller import Controller
from launchpad.program import Program

# Launchpad's names, and ours, for each launcher.
_ALIASES = {
  "local_mt": "threads",
  "threads": "threads",
  "test_mt": "test",
  "test": "test",
  "local_mp": "multiprocess",
  "multiprocess": "multiprocess",
  "test_mp": "multiprocess",
}
_LATER = {"ssh", "ray"}


def launch(
  program: Program,
  launch_type: str | flags.LaunchType | None = None,
  *,
  test_case: Any = None,
  grace_period: float | None = None,
  serialize_py_nodes: bool | None = None,
  local_resources: dict[str, Any] | None = None,
  terminal: str | None = None,
  log_dir: str | pathlib.Path | None = None,
) -> Controller:
  """Runs `program` and returns its controller without waiting for it.

  Args:
    program: the program to run.
    launch_type: 'threads' ('local_mt'), 'test' ('test_mt'), or
      'multiprocess' ('local_mp'; 'test_mp' is the same without signal
      handling); defaults to the `--lp_launch_type` flag, else threads.
    test_case: a unittest.TestCase whose cleanup stops the program.
    grace_period: seconds nodes get to end after a stop before being forced
      (default 10).
    serialize_py_nodes: check that every node can be pickled, as it must
      be to run in another process (default True; programs run in threads
      may pass False to share unpicklable objects).
    local_resources: multiprocess: group label -> lp.PythonProcess(env=...,
      args=..., interpreter=...).
    terminal: multiprocess: 'current_terminal' (default: every node's lines,
      prefixed, here and in files), 'output_to_files' (files only) or
      'tmux_session' (files, and a tmux window per node).
    log_dir: multiprocess: the run directory for node logs (default
      ~/.launchpad/runs/<program>-<time>/).
  """
  grace_period = defaults.get("grace_period", 10.0) if grace_period is None else grace_period
  terminal = terminal or defaults.get("terminal")
  log_dir = log_dir or defaults.get("log_dir")
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
  if name == "multiprocess":
    plan = plan_lib.make_plan(program, serialize=True)
    controller = processes.launch(
      plan,
      grace_period,
      local_resources,
      pathlib.Path(log_dir) if log_dir else None,
      terminal=terminal or "current_terminal",
      handle_signals=kind != "test_mp" and test_case is None,
    )
  else:
    plan = plan_lib.make_plan(program, serialize=serialize_py_nodes is not False)
    if name == "test":
      return test.launch(plan, grace_period, test_case)
    controller = threads.launch(plan, grace_period)
  if test_case is not None:
    test.add_cleanup(test_case, controller)
  launched.append(controller)
  return controller


# Every controller launched in this process, for `lp launch` to wait on.
launched: list[Controller] = []
# Options that `lp launch` sets for every lp.launch call of the target.
defaults: dict[str, Any] = {}

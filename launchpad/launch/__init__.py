"""`lp.launch`: turn a program into running workers with a chosen launcher."""

from __future__ import annotations

import pathlib
from typing import Any

from launchpad import flags
from launchpad.launch import plan as plan_lib
from launchpad.launch import processes, test, threads
from launchpad.launch.controller import Controller
from launchpad.program import Program
from launchpad.tls import TlsConfig

# Launchpad's names, and ours, for each launcher.
_ALIASES = {
  "local_mt": "threads",
  "threads": "threads",
  "test_mt": "test",
  "test": "test",
  "local_mp": "multiprocess",
  "multiprocess": "multiprocess",
  "test_mp": "multiprocess",
  "ssh": "ssh",
  "ray": "ray",
}


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
  hosts: str | pathlib.Path | dict[str, Any] | None = None,
  ray_address: str | None = None,
  tls: bool | TlsConfig | None = None,
) -> Controller:
  """Runs `program` and returns its controller without waiting for it.

  Args:
    program: the program to run.
    launch_type: 'threads' ('local_mt'), 'test' ('test_mt'),
      'multiprocess' ('local_mp'; 'test_mp' is the same without signal
      handling), 'ssh' (nodes on the hosts of `hosts`) or 'ray' (nodes as
      Ray actors); defaults to the `--lp_launch_type` flag, else threads.
    test_case: a unittest.TestCase whose cleanup stops the program.
    grace_period: seconds nodes get to end after a stop before being forced
      (default 10).
    serialize_py_nodes: check that every node can be pickled, as it must
      be to run in another process (default True; programs run in threads
      may pass False to share unpicklable objects).
    local_resources: group label -> per-group settings: multiprocess takes
      lp.PythonProcess(env=..., args=..., interpreter=...); ray takes
      lp.RayResources(num_cpus=..., num_gpus=..., resources=...).
    terminal: multiprocess: 'current_terminal' (default: every node's lines,
      prefixed, here and in files), 'output_to_files' (files only) or
      'tmux_session' (files, and a tmux window per node).
    log_dir: multiprocess and ssh: the run directory for node logs (default
      ~/.launchpad/runs/<program>-<time>/).
    hosts: ssh: the hosts file (TOML) or its parsed contents, mapping groups
      to hosts (see docs/remote.md).
    ray_address: ray: the cluster to join ('auto', 'ray://host:10001', ...);
      default: a cluster this process already joined, else a new local one.
    tls: ssh and ray: encrypt traffic between hosts with TLS: True makes a
      certificate for this launch; or give lp.TlsConfig.from_files(...).
  """
  grace_period = defaults.get("grace_period", 10.0) if grace_period is None else grace_period
  terminal = terminal or defaults.get("terminal")
  log_dir = log_dir or defaults.get("log_dir")
  kind = launch_type.value if isinstance(launch_type, flags.LaunchType) else launch_type
  kind = kind or flags.default_launch_type()
  name = _ALIASES.get(kind)
  if name is None:
    known = ", ".join(sorted(_ALIASES))
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
  elif name == "ssh":
    from launchpad.launch import ssh

    controller = ssh.launch(
      plan_lib.make_plan(program, serialize=True),
      grace_period,
      hosts if hosts is not None else defaults.get("hosts"),
      pathlib.Path(log_dir) if log_dir else None,
      tls=defaults.get("tls", False) if tls is None else tls,
      handle_signals=test_case is None,
    )
  elif name == "ray":
    from launchpad.launch import ray as ray_launcher

    controller = ray_launcher.launch(
      plan_lib.make_plan(program, serialize=True),
      grace_period,
      local_resources,
      address=ray_address or defaults.get("ray_address"),
      tls=defaults.get("tls", False) if tls is None else tls,
      handle_signals=test_case is None,
    )
  else:
    plan = plan_lib.make_plan(program, serialize=serialize_py_nodes is not False)
    if name == "test":
      launched.append(test.launch(plan, grace_period, test_case))
      return launched[-1]
    controller = threads.launch(plan, grace_period)
  if test_case is not None:
    test.add_cleanup(test_case, controller)
  launched.append(controller)
  return controller


# Every controller launched in this process, for `lp launch` to wait on.
launched: list[Controller] = []
# Options that `lp launch` sets for every lp.launch call of the target.
defaults: dict[str, Any] = {}

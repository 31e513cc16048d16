"""`lp.launch`: turn a program into running workers with a chosen launcher."""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from launchpad import address, errors, flags
from launchpad.launch import lifetime, processes, terminals, test, threads
from launchpad.launch import plan as plan_lib
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
# Launchpad's launch types that need xmanager, and what to use here instead.
_XMANAGER_TYPES = {
  "vertex_ai": "launch_type='ray' (a Ray or KubeRay cluster) or 'ssh' (your own hosts)",
  "local_docker": "launch_type='local_mp' (one process per node; lp.PythonProcess sets "
  "each group's environment and interpreter)",
}


def launch(
  programs: Program | Sequence[Program],
  launch_type: str | flags.LaunchType | None = None,
  xm_resources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
  local_resources: dict[str, Any] | None = None,
  test_case: Any = None,
  terminal: str | None = None,
  *,
  serialize_py_nodes: bool | None = None,
  controller_xm_requirements: Mapping[str, Any] | None = None,
  grace_period: float | None = None,
  log_dir: str | pathlib.Path | None = None,
  hosts: str | pathlib.Path | dict[str, Any] | None = None,
  ray_address: str | None = None,
  tls: bool | TlsConfig | None = None,
) -> Controller:
  """Runs a program and returns its controller without waiting for it.

  The positional arguments are DeepMind Launchpad's, in its order; the
  options after them are keyword-only.

  Args:
    programs: the program to run; or a list of programs, as Launchpad takes,
      of which the first runs (with a warning if there are more): every
      launcher here runs one program per call.
    launch_type: 'local_mt' ('threads'), 'test_mt' ('test'), 'local_mp'
      ('multiprocess'; 'test_mp' is the same without signal handling), 'ssh'
      (nodes on the hosts of `hosts`) or 'ray' (nodes as Ray actors); a
      string or a lp.LaunchType; defaults to the `--lp_launch_type` flag,
      else local_mt.
    xm_resources: xmanager (Vertex AI) job settings: ignored here, with a
      warning; `local_resources` gives per-group settings.
    local_resources: group label -> per-group settings: multiprocess takes
      lp.PythonProcess(args=..., env=..., interpreter=...); ray takes
      lp.RayResources(num_cpus=..., num_gpus=..., resources=...).
    test_case: a unittest.TestCase whose cleanup stops the program.
    terminal: multiprocess: 'current_terminal' (default: every node's lines,
      prefixed, here and in files), 'output_to_files' (files only),
      'tmux_session' (files, and a tmux window per node), or 'xterm',
      'gnome-terminal', 'gnome-terminal-tabs' (a window or tab per node;
      where there is no such terminal or no display, current_terminal, with
      a warning).
    serialize_py_nodes: check that every node can be pickled, as it must
      be to run in another process (default True; programs run in threads
      may pass False to share unpicklable objects).
    controller_xm_requirements: xmanager settings: ignored here, with a warning.
    grace_period: seconds nodes get to end after a stop before being forced
      (default 10).
    log_dir: multiprocess and ssh: the run directory for node logs (default
      ~/.launchpad/runs/<program>-<time>/).
    hosts: ssh: the hosts file (TOML) or its parsed contents, mapping groups
      to hosts (see docs/remote.md).
    ray_address: ray: the cluster to join ('auto', 'ray://host:10001', ...);
      default: a cluster this process already joined, else a new local one.
    tls: ssh and ray: encrypt traffic between hosts with TLS: True makes a
      certificate for this launch; or give lp.TlsConfig.from_files(...).
  """
  program = _one_program(programs)
  kind = launch_type.value if isinstance(launch_type, flags.LaunchType) else launch_type
  kind = kind or flags.default_launch_type()
  name = _launcher(kind)
  _warn_ignored(xm_resources, controller_xm_requirements)
  grace_period = defaults.get("grace_period", 10.0) if grace_period is None else grace_period
  terminal = terminal or defaults.get("terminal")
  log_dir = log_dir or defaults.get("log_dir")
  address.bind_local(program, single_host=name in ("threads", "test", "multiprocess"))
  if name == "multiprocess":
    plan = plan_lib.make_plan(program, serialize=True)
    windows = terminals.windows(terminal)
    controller = processes.launch(
      plan,
      grace_period,
      local_resources,
      pathlib.Path(log_dir) if log_dir else None,
      terminal=terminals.output_mode(terminal, windows),
      handle_signals=kind != "test_mp" and test_case is None,
    )
    if windows is not None:
      windows.open(controller.run_dir, [worker.name for worker in plan.workers])
      windows.close_when_done(controller)
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
  elif kind != "test_mp":
    # As in Launchpad, a main may return right after lp.launch: the process
    # lives until the program ends.
    lifetime.process.watch(controller)
  launched.append(controller)
  return controller


def _one_program(programs: Program | Sequence[Program]) -> Program:
  """The program to run, from Launchpad's `programs` (one, or a list)."""
  if isinstance(programs, Program):
    return programs
  if not isinstance(programs, Sequence) or isinstance(programs, str):
    raise TypeError(f"lp.launch takes a lp.Program (or a list of them), got {programs!r}.")
  if not programs:
    raise ValueError("lp.launch got an empty list of programs; give it a lp.Program.")
  for i, program in enumerate(programs):
    if not isinstance(program, Program):
      raise TypeError(f"lp.launch: programs[{i}] is {program!r}, not a lp.Program.")
  if len(programs) > 1:
    others = ", ".join(repr(p.name) for p in programs[1:])
    warnings.warn(
      f"lp.launch got {len(programs)} programs and runs one per call: launching the first, "
      f"{programs[0].name!r}, not {others}; launch each with its own lp.launch call.",
      stacklevel=3,
    )
  return programs[0]


def _launcher(kind: Any) -> str:
  """Our launcher for a launch type's name, or an error saying what to use."""
  if kind in _XMANAGER_TYPES:
    raise errors.LaunchpadError(
      f"launch type {kind!r} runs nodes through xmanager, which this launchpad does not "
      f"have; use {_XMANAGER_TYPES[kind]}."
    )
  name = _ALIASES.get(kind)
  if name is None:
    known = ", ".join(sorted(_ALIASES))
    raise ValueError(f"unknown launch type {kind!r}; use one of: {known}.")
  return name


def _warn_ignored(xm_resources: Any, controller_xm_requirements: Any) -> None:
  if xm_resources is not None:
    warnings.warn(
      "lp.launch: xm_resources is ignored: it configures xmanager (Vertex AI) jobs, which "
      "this launchpad does not run. Give per-group settings with local_resources={label: "
      "lp.PythonProcess(...)} (local_mp) or lp.RayResources(...) (ray).",
      stacklevel=3,
    )
  if controller_xm_requirements is not None:
    warnings.warn(
      "lp.launch: controller_xm_requirements is ignored: it configures an xmanager job, "
      "which this launchpad does not run; the controller here is the launching process.",
      stacklevel=3,
    )


# Every controller launched in this process, for `lp launch` to wait on.
launched: list[Controller] = []
# Options that `lp launch` sets for every lp.launch call of the target.
defaults: dict[str, Any] = {}

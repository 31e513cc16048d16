"""`lp.launch`: turn a program into running workers with a chosen launcher."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from launchpad import address, flags
from launchpad.launch import plan as plan_lib
from launchpad.launch import registry, session
from launchpad.launch import scope as scope_lib
from launchpad.program import Program
from launchpad.tls import TlsConfig

if TYPE_CHECKING:
  from launchpad.launch.controller import Controller

DEFAULT_GRACE_PERIOD = 10.0


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
  **launcher_options: Any,
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
      (nodes on the hosts of `hosts`), 'ray' (nodes as Ray actors), 'slurm'
      (nodes as Slurm tasks), or a launcher of an installed package (see
      docs/launching.md); a string or a lp.LaunchType; defaults to the
      `--lp_launch_type` flag, else local_mt.
    xm_resources: xmanager (Vertex AI) job settings: ignored here, with a
      warning; `local_resources` gives per-group settings.
    local_resources: group label -> per-group settings: multiprocess takes
      lp.PythonProcess(args=..., env=..., interpreter=...); ray takes
      lp.RayResources(num_cpus=..., num_gpus=..., resources=...); slurm
      takes lp.SlurmResources(cpus=..., gpus=..., mem=..., partition=...).
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
    tls: ssh, ray and slurm: encrypt traffic between hosts with TLS: True
      makes a certificate for this launch; or give lp.TlsConfig.from_files(...).
    **launcher_options: options of the chosen launcher, by name: e.g.
      slurm's detach=True (submit the whole program as a batch job and
      return at once), preempt_signal='USR1@60', requeue, shared_filesystem
      (launchpad.launch.slurm.SlurmOptions lists them).
  """
  program = _one_program(programs)
  _warn_ignored(xm_resources, controller_xm_requirements)
  scope = scope_lib.current()
  if scope is not None and scope.capture:
    raise scope_lib.ProgramCaptured(program)
  given = {
    "local_resources": local_resources,
    "terminal": terminal,
    "grace_period": grace_period,
    "log_dir": log_dir,
    "hosts": hosts,
    "ray_address": ray_address,
    "tls": tls,
    **launcher_options,
  }
  given = {**(scope.defaults if scope else {}), **{k: v for k, v in given.items() if v is not None}}
  kind = launch_type.value if isinstance(launch_type, flags.LaunchType) else launch_type
  entry = registry.find(kind or flags.default_launch_type())
  launcher = entry.load()
  options = _options(entry, launcher, given, set(launcher_options))
  address.bind_local(program, single_host=launcher.single_host)
  plan = plan_lib.make_plan(
    program, serialize=launcher.nodes_travel or serialize_py_nodes is not False
  )
  if getattr(options, "detach", False):  # the program runs elsewhere, launcher included
    controller = launcher.detach(plan, options)
  else:
    controller = session.run(
      launcher,
      plan,
      options,
      given.get("grace_period", DEFAULT_GRACE_PERIOD),
      handle_signals=not entry.testing and test_case is None,
    )
  if test_case is not None:
    from launchpad.launch import test

    test.add_cleanup(test_case, controller)
  elif not entry.testing:
    from launchpad.launch import lifetime

    # As in Launchpad, a main may return right after lp.launch: the process
    # lives until the program ends.
    lifetime.process.watch(controller)
  if scope is not None:
    scope.controllers.append(controller)
  return controller


def _options(entry: registry.Entry, launcher: Any, given: dict[str, Any], own: set[str]) -> Any:
  """The launcher's options object, from the lp.launch arguments it takes.

  Arguments of lp.launch that this launcher does not use are left aside (as
  Launchpad does); a launcher-specific keyword it does not know is an error.
  """
  fields = {f.name for f in dataclasses.fields(launcher.options)}
  unknown = sorted(own - fields)
  if unknown:
    raise TypeError(
      f"lp.launch: launch type {entry.name!r} takes no option {', '.join(map(repr, unknown))}; "
      f"its options are: {', '.join(sorted(fields)) or '(none)'}."
    )
  return launcher.options(**{k: v for k, v in given.items() if k in fields})


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

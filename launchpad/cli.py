"""The `lp` command: launch programs, watch and stop running ones, draw them.

  lp launch [--mode=multiprocess|threads|test] TARGET [-- ARGS...]
  lp status [RUN]
  lp status --watch [RUN]   (or lp top [RUN]): a live table of a running program
  lp stop RUN|SWEEP
  lp graph [--format=dot|mermaid|svg|png] [-o FILE] TARGET [-- ARGS...]
  lp sweep [--mode=...] TARGET --space SPACE.toml [--trials N] [--parallel K] [-- ARGS...]

Exit status of `lp launch`: 0 when the program ended normally (its nodes
ended, or lp.stop() was called); 1 when a node failed (its traceback or exit
reason is printed) or the target itself raised (its traceback is printed);
2 when the program could not be launched (a bad command line, target, run
directory or hosts file, a node that cannot be pickled: one paragraph says
what to do); 128+N when stopped by signal N (130 for Ctrl-C, 143 for
SIGTERM, 138 for a Slurm job's SIGUSR1 notice), after a graceful stop.
Every command exits 2 on a bad command line, 141 (128 + SIGPIPE) when its
output is closed (`lp status | head -1`), and prints no traceback of its
own; docs/launching.md lists them all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import importlib
import importlib.util
import logging
import os
import pathlib
import runpy
import signal
import socket
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import psutil
from absl import flags as absl_flags

import launchpad
from launchpad import errors, graph, live_view, runs
from launchpad.control import control_pb2
from launchpad.launch import registry
from launchpad.launch import scope as scope_lib
from launchpad.program import Program
from launchpad.tls import TlsConfig

LAUNCH_HELP = """\
Runs a program.

TARGET is one of:
  agent.py                 runs the file's main under absl; every lp.launch
                           inside uses --mode unless it names a launch type
  agent.py:make_program    calls make_program() and launches the Program it returns
  package.module:make_program
                           the same for an importable module

Arguments after `--` reach the target's absl flags. A launcher's own
options are listed below under its --mode; they reach every lp.launch call
of that launch type.

examples:
  lp launch --mode=multiprocess examples/consumer_producers.py -- --num_producers=4
  lp launch examples/consumer_producers.py:make_program
  lp launch --mode=threads examples/hello_world.py
  lp launch --log-dir=/tmp/run examples/hello_world.py

In multiprocess mode every node's output is printed prefixed with its name
(label[index]) and kept in the run directory (--log-dir, default
~/.launchpad/runs/PROGRAM-TIME/); in threads and test modes nodes share this
process's output.
Ctrl-C or SIGTERM stops the program gracefully: stop handlers run and
lp.wait_for_stop() returns in every node; nodes still running after
--grace-period seconds are killed. A second Ctrl-C kills them at once.

exit status: 0 program ended normally; 1 a node failed, or the target
raised; 2 bad command line or target, nothing ran; 128+N stopped by signal N
(130 Ctrl-C, 143 SIGTERM).
"""

SWEEP_HELP = """\
Runs trials of a program over a search space, at most --parallel at once,
stopping the losers early with --pruner. Each trial calls TARGET's program
factory with its parameters as keyword arguments and launches the program
it returns with --mode; nodes report with lp.report(step=..., NAME=value),
and the sweep optimizes --objective.

TARGET is file.py (its function make_program), file.py:function or
package.module:function. SPACE.toml gives each parameter:
  learning_rate = {type = "float", low = 1e-4, high = 1e-2, log = true}
  batch_size = {type = "int", low = 32, high = 256, step = 32}
  target_update_period = [50, 250, 1000]      # a choice; also {values = [...]}
  num_actors = 2                               # a constant
and `seed` like any parameter; without it each trial's seed is its number.

The sweep lives in ~/.launchpad/sweeps/NAME/ (the study, status.json,
results.csv, curves.png, a directory per trial). Run the same command
again to resume a sweep that was stopped or killed: finished trials are
kept, the ones it left running run again. `lp status` and `lp top NAME`
show it from another shell, and `lp stop NAME` stops it as Ctrl-C does.
Launch options mean what they mean to `lp launch`, for every trial (node
output goes to the trials' log files unless --terminal=current_terminal).

examples:
  lp sweep examples/dqn/trial.py --space examples/dqn/sweep.toml --parallel 2 --pruner median
  lp sweep --mode=threads agent.py:make_program --space space.toml --sampler tpe --trials 20

exit status: 0 every trial ended (some may have been pruned or have
failed: the table says which), or `lp stop NAME` stopped it; 1 a trial
failed under --fail-fast (its traceback is printed), or no trial
completed; 2 bad command line, target, space, option or storage, or the
sweep runs already: nothing ran; 128+N interrupted by signal N (130
Ctrl-C, 143 SIGTERM) after stopping the running trials, which run again
when the sweep does.
"""

GRAPH_HELP = """\
Draws a program without running it: a box per group (label) holding its
nodes, each with its name, type and the function or class it runs;
colocations as boxes inside their group; and an arrow from each node to
every node whose handle it receives (caller -> callee).

TARGET is given as to `lp launch`: file.py:function or package.module:function
returning the Program, or file.py, whose main then runs up to its lp.launch
call, which hands the program over instead of launching it. Options go
before TARGET; arguments after `--` reach the target's absl flags.

examples:
  lp graph examples/consumer_producers.py -- --num_producers=3
  lp graph --format=mermaid examples/consumer_producers.py:make_program
  lp graph -o program.svg mypackage.agent:make_program

dot and mermaid are text, made without other tools; svg and png need
Graphviz's `dot` program (apt-get install graphviz).
"""


def main(argv: list[str] | None = None) -> int:
  """Runs one `lp` command; returns its exit status.

  A closed stdout (`lp status | head -1`) ends the command quietly with
  128 + SIGPIPE, as it would a shell tool; Ctrl-C with 128 + SIGINT.
  """
  try:
    status = _command(argv)
    sys.stdout.flush()  # a closed pipe shows here rather than at exit
    return status
  except BrokenPipeError:
    # The interpreter flushes stdout once more at exit: let that go nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE
  except KeyboardInterrupt:
    return 128 + signal.SIGINT


def _command(argv: list[str] | None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # What follows `--` is the target's: options of ours may come after the
  # target (`lp graph agent.py --format=svg -- --num_actors=4`).
  target_args = []
  if "--" in argv:
    cut = argv.index("--")
    argv, target_args = argv[:cut], argv[cut + 1 :]
  # Launchers' own flags only where they are taken: reading them imports
  # every launcher.
  try:
    parser = _parser(launchers=argv[:1] in (["launch"], ["sweep"]))
  except errors.LaunchpadError as e:  # an installed launcher's flags cannot be read
    print(f"lp {argv[0]}: {e}", file=sys.stderr)
    return 2
  args, unknown = parser.parse_known_args(argv)
  if unknown:
    if args.command in ("launch", "sweep") and any(a.startswith("-") for a in unknown):
      return _unknown_options(args, unknown)
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if hasattr(args, "target_args"):
    args.target_args = [*args.target_args, *target_args]
  if args.command == "launch":
    return _launch(args)
  if args.command == "status":
    return _status(args)
  if args.command == "top":
    return _watch(args)
  if args.command == "graph":
    return _graph(args)
  if args.command == "sweep":
    return _sweep(args)
  return _stop(args)


def _parser(launchers: bool) -> argparse.ArgumentParser:
  """The command line; with `launchers`, `lp launch` and `lp sweep` take the
  flags of every launcher (registry.Flag) too."""
  parser = argparse.ArgumentParser(prog="lp", description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  launch = commands.add_parser(
    "launch",
    help="run a program",
    description=LAUNCH_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  launch.add_argument("--mode", default="multiprocess", choices=registry.names(), help="launcher")
  launch.add_argument("--log-dir", type=pathlib.Path, help="run directory for node logs")
  _add_launch_options(launch, terminal="current_terminal")
  if launchers:
    _add_launcher_flags(launch, sweep=False)
  launch.add_argument("target", help="file.py, file.py:function or package.module:function")
  launch.add_argument("target_args", nargs=argparse.REMAINDER, help="-- then the target's flags")
  status = commands.add_parser("status", help="list running programs and their nodes")
  status.add_argument("run", nargs="?", help="a run name (default: every running program)")
  status.add_argument(
    "--watch", action="store_true", help="a live table of one program until it ends (= lp top)"
  )
  _add_watch_options(status)
  top = commands.add_parser(
    "top", help="a live table of a running program: states, CPU, memory, RPC rates, replay"
  )
  top.add_argument("run", nargs="?", help="a run name (default: the one running program)")
  _add_watch_options(top)
  stop = commands.add_parser("stop", help="stop a running program or sweep gracefully")
  stop.add_argument("run", help="the run or sweep name shown by `lp status`")
  drawing = commands.add_parser(
    "graph",
    help="draw a program's nodes, groups and handles",
    description=GRAPH_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  drawing.add_argument(
    "--format", choices=graph.FORMATS, help="default: from the suffix of -o, else dot"
  )
  drawing.add_argument("-o", "--output", type=pathlib.Path, help="write here, not to stdout")
  drawing.add_argument("target", help="file.py, file.py:function or package.module:function")
  drawing.add_argument("target_args", nargs="*", help="-- then the target's flags")
  _add_sweep_parser(commands, launchers)
  return parser


def _add_launch_options(parser: argparse.ArgumentParser, terminal: str) -> None:
  """The options of every lp.launch call the command makes, the same in
  `lp launch` and `lp sweep` (_launch_defaults reads them)."""
  parser.add_argument("--grace-period", type=_non_negative(float), default=10.0, metavar="SECONDS")
  parser.add_argument(
    "--terminal",
    default=terminal,
    choices=["current_terminal", "output_to_files", "tmux_session"],
    help="where node output goes besides the log files",
  )
  parser.add_argument(
    "--tls",
    action="store_true",
    help="ssh, ray and slurm modes: encrypt traffic between hosts, with a certificate made for this launch",
  )
  parser.add_argument(
    "--tls-cert",
    type=pathlib.Path,
    help="with --tls: use this certificate (PEM; it must name 'launchpad') instead of a new one",
  )
  parser.add_argument("--tls-key", type=pathlib.Path, help="with --tls-cert: its private key")
  parser.add_argument(
    "--tls-ca",
    type=pathlib.Path,
    help="with --tls-cert: the CA that signed every node's certificate",
  )


# Where the value of a launcher's flag goes in the parsed arguments: its
# option's name after this prefix, which no option of lp's own has.
LAUNCHER_OPTION = "launcher option "


def _add_launcher_flags(parser: argparse.ArgumentParser, sweep: bool) -> None:
  """Every launcher's flags, in a group per launcher. Two launchers may
  declare one flag for options of the same name (the first one's group
  shows it); a launch type that cannot be loaded shows why instead."""
  taken: dict[str, str] = {}  # flag -> the option it sets
  for entry in registry.launchers():
    title = f"--mode={entry.name}" + (f" ({entry.summary})" if entry.summary else "")
    try:
      flags = [f for f in entry.flags() if f.in_sweeps or not sweep]
    except errors.LaunchpadError as e:
      parser.add_argument_group(title, str(e))
      continue
    group = parser.add_argument_group(title)
    for flag in flags:
      owner = taken.get(flag.name)
      if owner is None:
        _add_flag(group, entry, flag)
        taken[flag.name] = flag.option
      elif owner != flag.option:
        raise errors.LaunchpadError(
          f"launch type {entry.name!r} has the flag {flag.name} for its option "
          f"{flag.option!r}, and another launcher has it for {owner!r}; rename one of the "
          "options, or uninstall the package that adds the launcher."
        )


def _add_flag(group: Any, entry: registry.Entry, flag: registry.Flag) -> None:
  help_text = f"{flag.help} (see {flag.see})" if flag.see else flag.help
  how = (
    {"type": flag.type, "metavar": flag.metavar}
    if flag.switch is None
    else {"action": "store_const", "const": flag.switch}
  )
  try:
    group.add_argument(flag.name, dest=f"{LAUNCHER_OPTION}{flag.option}", help=help_text, **how)
  except argparse.ArgumentError:
    raise errors.LaunchpadError(
      f"launch type {entry.name!r} has the flag {flag.name}, which is one of lp's own; rename "
      f"its option {flag.option!r}, or uninstall the package that adds the launcher."
    ) from None


def _add_sweep_parser(commands: Any, launchers: bool) -> None:
  study = importlib.import_module("launchpad.sweep.study")
  sweep = commands.add_parser(
    "sweep",
    help="run many variants of a program, stopping the losers early",
    description=SWEEP_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sweep.add_argument("--space", required=True, type=pathlib.Path, help="the search space (TOML)")
  sweep.add_argument("--trials", type=_positive(int), metavar="N", help="default: the grid's size")
  sweep.add_argument("--parallel", type=_positive(int), default=1, metavar="K", help="at once")
  sweep.add_argument("--mode", default="multiprocess", choices=registry.names(), help="launcher")
  sweep.add_argument("--sampler", choices=study.SAMPLERS, help="default: grid if it can, else tpe")
  sweep.add_argument("--sampler-seed", type=int, default=0, metavar="N")
  sweep.add_argument(
    "--pruner",
    default="none",
    choices=study.PRUNERS,
    help="early stopping",
  )
  for what in ("sampler", "pruner"):
    sweep.add_argument(
      f"--{what}-arg",
      action="append",
      default=[],
      type=_keyword,
      metavar="KEY=VALUE",
      help=f"an argument of the Optuna {what} (e.g. n_startup_trials=2); repeat for more"
      + ("; patience=N wraps any pruner in Optuna's PatientPruner" if what == "pruner" else ""),
    )
  sweep.add_argument("--objective", default="return", help="the lp.report metric to optimize")
  sweep.add_argument("--direction", default="maximize", choices=study.DIRECTIONS)
  sweep.add_argument(
    "--storage", metavar="URL", help="SQLAlchemy URL (default: SQLite in the sweep)"
  )
  sweep.add_argument("--name", help="the sweep's name (default: TARGET's and SPACE's file names)")
  sweep.add_argument("--fail-fast", action="store_true", help="stop at the first failed trial")
  sweep.add_argument("--trial-timeout", type=_positive(float), metavar="SECONDS")
  _add_launch_options(sweep, terminal="output_to_files")
  if launchers:
    _add_launcher_flags(sweep, sweep=True)
  # Each trial's run directory is its own directory in the sweep's.
  sweep.set_defaults(log_dir=None)
  sweep.add_argument("target", help="file.py, file.py:function or package.module:function")
  sweep.add_argument("target_args", nargs="*", help="-- then the target's flags")


def _keyword(text: str) -> tuple[str, Any]:
  """An argparse type: KEY=VALUE, VALUE read as a TOML value (a number, true,
  "text", [1, 2]) or else taken as a string."""
  key, equals, value = text.partition("=")
  if not equals or not key.isidentifier():
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  try:
    return key, tomllib.loads(f"value = {value}")["value"]
  except tomllib.TOMLDecodeError:
    return key, value


def _add_watch_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--interval", type=_positive(float), default=1.0, metavar="SECONDS", help="between refreshes"
  )
  parser.add_argument(
    "--iterations",
    type=_positive(int),
    metavar="N",
    help="show N tables, then exit (default: until the program ends)",
  )


def _positive(kind: type) -> Callable[[str], Any]:
  """An argparse type: a number of `kind` greater than 0."""
  return _number(kind, lambda value: value > 0, "greater than 0")


def _non_negative(kind: type) -> Callable[[str], Any]:
  """An argparse type: a number of `kind`, 0 or more."""
  return _number(kind, lambda value: value >= 0, "0 or more")


def _number(kind: type, accept: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
  def parse(text: str) -> Any:
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not accept(value):
      raise argparse.ArgumentTypeError(f"expected a number {wanted}, got {text!r}")
    return value

  return parse


def _launch(args: argparse.Namespace) -> int:
  try:
    defaults = _launch_defaults(args)
  except Exception as e:  # noqa: BLE001 - a bad option: told
    return _failed("lp launch", e)
  with scope_lib.LaunchScope(defaults) as scope:
    progress = _Progress(scope.controllers, args.grace_period)
    try:
      return _launch_and_wait(args, scope)
    finally:
      progress.stop()


class _Progress:
  """Prints how launches and stops of the launched programs go, on stderr
  (live_view.LaunchProgress), from a thread of its own."""

  SECONDS = 0.25  # between looks at the programs' status

  def __init__(self, launched: list, grace_period: float):
    self._launched = launched
    self._grace_period = grace_period
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="lp-progress", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stopped.set()
    self._thread.join(5.0)

  def _run(self) -> None:
    watchers: dict[int, live_view.LaunchProgress] = {}
    looked = time.monotonic()  # a program first seen now was launched since
    while not self._stopped.wait(self.SECONDS):
      for controller in list(self._launched):
        if not controller.done:
          watcher = watchers.setdefault(
            id(controller),
            live_view.LaunchProgress(controller.program, sys.stderr, self._grace_period, looked),
          )
          watcher.update(controller.status())
      looked = time.monotonic()


def _launch_and_wait(args: argparse.Namespace, scope: scope_lib.LaunchScope) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  status = _start(args)
  if status:  # the target gave up, or a launch failed: its programs must not run on
    for controller in scope.controllers:
      controller.stop()
  return _wait_all(scope.controllers) or status


def _launch_defaults(args: argparse.Namespace) -> dict[str, Any]:
  """What the command line sets for every lp.launch call of the target: lp's
  own options, and those of the launchers' flags that were given (None
  leaves an option to the call, or to its launcher)."""
  _check_required(args)
  return {
    "grace_period": args.grace_period,
    "log_dir": args.log_dir,
    "terminal": args.terminal,
    "tls": _tls_option(args),
    **{
      name.removeprefix(LAUNCHER_OPTION): value
      for name, value in vars(args).items()
      if name.startswith(LAUNCHER_OPTION)
    },
  }


def _check_required(args: argparse.Namespace) -> None:
  """Refuses a command line without a flag that --mode's launcher needs."""
  for flag in registry.find(args.mode).flags():
    if flag.required and getattr(args, f"{LAUNCHER_OPTION}{flag.option}", None) is None:
      value = f" {flag.metavar}" if flag.metavar else ""
      see = f" (see {flag.see})" if flag.see else ""
      raise _UserError(f"--mode={args.mode} needs {flag.name}{value}{see}.")


def _unknown_options(args: argparse.Namespace, unknown: list[str]) -> int:
  """Exits 2 on options that neither lp nor any launcher has, naming
  --mode's own flags, which may be what was meant."""
  command = f"lp {args.command}"
  try:
    flags = registry.find(args.mode).flags()
  except errors.LaunchpadError as e:
    print(f"{command}: {e}", file=sys.stderr)
    return 2
  names = [f.name for f in flags if f.in_sweeps or args.command == "launch"]
  given = [a.partition("=")[0] for a in unknown if a.startswith("-")]
  close = difflib.get_close_matches(given[0], names, n=1)
  meant = f" (did you mean {close[0]}?)" if close else ""
  own = f"its own options are {', '.join(names)}" if names else "it has no options of its own"
  print(
    f"{command}: --mode={args.mode} has no option {', '.join(given)}{meant}; {own}; "
    f"`{command} --help` lists every option.",
    file=sys.stderr,
  )
  return 2


def _start(args: argparse.Namespace) -> int:
  """Launches the target's programs; 0, or the exit status of a target that
  gave up or could not be launched (after saying why)."""
  mode = registry.flag_value(args.mode)
  try:
    path, _, function = args.target.partition(":")
    if not function:
      return _run_main(path, args.target_args, mode)
    program = _program_from(path, function, args.target_args)
    launchpad.launch(program, launch_type=mode)
  except Exception as e:  # noqa: BLE001 - the target's error or its launch's: told, then stopped
    return _failed("lp launch", e)
  return 0


class _UserError(Exception):
  """The command line names a target or a setting that cannot be used; the
  message says why and what to do."""


# How many status queries in a row `lp status --watch` lets go unanswered (a
# launcher busy stopping nodes on a loaded machine) before it gives up.
WATCH_ATTEMPTS = 3

# Errors of launchpad raised while a program runs; the others (ProgramError,
# SerializationError, HostError, private_files.PrivateFileError, ...) mean
# that a program could not be launched, for a reason the message gives.
_RUN_TIME_ERRORS = (
  errors.RemoteError,
  errors.CallTimeoutError,
  errors.ConnectionLostError,
  errors.AuthenticationError,
  errors.ProgramStoppedError,
  errors.NodeFailedError,
)


def _failed(command: str, error: Exception) -> int:
  """Tells how the target, or its launch, failed; the exit status: 2 (one
  paragraph) when it could not be launched, 1 (with the target's traceback)
  when the target itself raised."""
  if isinstance(error, errors.NodeFailedError):
    print(f"\n{command}: {error}", file=sys.stderr)
    return 1
  if isinstance(error, _UserError | errors.LaunchpadError) and not isinstance(
    error, _RUN_TIME_ERRORS
  ):
    print(f"{command}: {error}", file=sys.stderr)
    return 2
  traceback.print_exception(error)
  return 1


def _tls_option(args: argparse.Namespace) -> bool | TlsConfig:
  if args.tls_cert is None:
    if args.tls_key is not None or args.tls_ca is not None:
      raise _UserError("--tls-key and --tls-ca go with --tls-cert (your own certificate).")
    return args.tls
  if args.tls_key is None:
    raise _UserError("--tls-cert needs --tls-key (its private key).")
  try:
    return TlsConfig.from_files(args.tls_cert, args.tls_key, args.tls_ca)
  except OSError as e:
    raise _UserError(
      f"cannot read {e.filename} ({e.strerror}); --tls-cert, --tls-key and --tls-ca name PEM files."
    ) from None


def _program_from(path: str, function: str, target_args: list[str]) -> Program:
  program = _function_of(path, function, target_args)()
  if not isinstance(program, Program):
    raise _UserError(f"{path}:{function}() returned {program!r}, not a lp.Program.")
  return program


def _function_of(path: str, function: str, target_args: list[str]) -> Callable[..., Any]:
  """The target's `function`, once its module is loaded and its flags parsed."""
  module = _load(path)
  try:
    absl_flags.FLAGS([path, *target_args], known_only=False)
  except absl_flags.Error as e:
    raise _UserError(f"{path}: {e} (the arguments after -- are the target's flags).") from None
  make = getattr(module, function, None)
  if not callable(make):
    raise _UserError(f"{path} has no function {function!r}; name one that returns a lp.Program.")
  return make


def _load(path: str) -> Any:
  if path.endswith(".py"):
    if not os.path.isfile(path):
      raise _UserError(f"no such file: {path}")
    name = pathlib.Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(pathlib.Path(path).resolve().parent))
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(path)
    except ImportError as e:
      raise _UserError(
        f"cannot import {path}: {e}; name a file.py or a module on the Python path."
      ) from e
  cloudpickle.register_pickle_by_value(module)  # node processes need not import it
  return module


def _run_main(path: str, target_args: list[str], mode: str) -> int:
  """Runs the file as __main__; returns its exit status. What it raises,
  other than SystemExit, goes to the caller."""
  if not os.path.isfile(path):
    raise _UserError(f"no such file: {path}")
  if not any(a.startswith("--lp_launch_type") for a in target_args):
    target_args = [*target_args, f"--lp_launch_type={mode}"]
  sys.argv = [path, *target_args]
  sys.path.insert(0, str(pathlib.Path(path).resolve().parent))
  try:
    runpy.run_path(path, run_name="__main__")
  except SystemExit as e:
    if e.code in (None, 0):
      return 0
    if not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else 1
  return 0


def _wait_all(controllers: list) -> int:
  """Waits for every launched program; the exit status they add up to."""
  status = 0
  for controller in controllers:
    try:
      while not controller.wait(timeout=1.0):
        pass
    except errors.NodeFailedError as e:
      print(f"\nlp launch: {e}", file=sys.stderr)
      status = 1
    if controller.stopped_by and not status:
      status = 128 + controller.stopped_by
  return status


def _graph(args: argparse.Namespace) -> int:
  target_args = args.target_args
  suffix = args.output.suffix.lstrip(".") if args.output else ""
  fmt = args.format or {"gv": "dot", "mmd": "mermaid"}.get(suffix, suffix)
  fmt = fmt if fmt in graph.FORMATS else "dot"
  try:
    program = _load_program(args.target, target_args)
  except Exception as e:  # noqa: BLE001 - the target's error: told as `lp launch` tells it
    return _failed("lp graph", e)
  try:
    data = graph.render(program, fmt)
  except errors.ProgramError as e:
    print(f"lp graph: {e}", file=sys.stderr)
    return 2
  except graph.GraphvizError as e:
    print(f"lp graph: {e}", file=sys.stderr)
    return 1
  if args.output is None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
  try:
    args.output.write_bytes(data)
  except OSError as e:
    print(
      f"lp graph: cannot write {args.output} ({e.strerror}); choose another -o FILE.",
      file=sys.stderr,
    )
    return 2
  return 0


def _load_program(target: str, target_args: list[str]) -> Program:
  """The program TARGET gives, as `lp launch` would get it, without running it."""
  path, _, function = target.partition(":")
  if function:
    return _program_from(path, function, target_args)
  try:
    with scope_lib.LaunchScope(capture=True):
      status = _run_main(path, target_args, registry.flag_value("threads"))
  except scope_lib.ProgramCaptured as captured:
    if not isinstance(captured.program, Program):
      raise _UserError(
        f"{path} called lp.launch with {captured.program!r}, not a lp.Program."
      ) from None
    return captured.program
  raise _UserError(
    f"{path} ended (exit status {status}) without calling lp.launch, so there is no program "
    f"to draw; name a function that returns it instead: {path}:make_program."
  )


def _sweep(args: argparse.Namespace) -> int:
  """`lp sweep`: parses, loads the factory, and hands over to lp.sweep."""
  sweep_lib = importlib.import_module("launchpad.sweep")  # the package, not lp.sweep
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    importlib.import_module("launchpad.sweep.study").import_optuna().logging.set_verbosity(
      logging.WARNING  # the sweep says what happens to each trial itself
    )
    path, _, function = args.target.partition(":")
    factory = _function_of(path, function or "make_program", args.target_args)
    # What lp launch gives lp.launch (None: the launcher's default).
    launch_options = {k: v for k, v in _launch_defaults(args).items() if v is not None}
    result = sweep_lib.sweep(
      factory,
      args.space,
      trials=args.trials,
      parallel=args.parallel,
      launch_type=registry.flag_value(args.mode),
      sampler=args.sampler,
      pruner=args.pruner,
      storage=args.storage,
      name=args.name,
      objective=args.objective,
      direction=args.direction,
      fail_fast=args.fail_fast,
      sampler_seed=args.sampler_seed,
      sampler_options=dict(args.sampler_arg),
      pruner_options=dict(args.pruner_arg),
      trial_timeout=args.trial_timeout,
      launch_options=launch_options,
    )
  except sweep_lib.TrialFailedError as e:
    print(f"\nlp sweep: {e}", file=sys.stderr)
    return 1
  except Exception as e:  # noqa: BLE001 - the sweep's refusal, or the target's own error
    return _failed("lp sweep", e)
  if result.stopped_by is not None:
    return 128 + result.stopped_by
  if result.stop_request is not None:
    return 0
  if result.best is None:
    print(
      f"lp sweep: no trial of {result.name} completed; results.csv and each trial's error.txt "
      f"in {result.directory} say why.",
      file=sys.stderr,
    )
    return 1
  return 0


def _watch(args: argparse.Namespace) -> int:
  """`lp status --watch` and `lp top`: a live table of one running program or sweep."""
  command = f"lp {args.command}"
  sweeps = importlib.import_module("launchpad.sweep.status")
  try:
    run = runs.find(args.run) if args.run else _only_run()
  except LookupError as e:
    sweep = sweeps.find(args.run) if args.run else _only_sweep(sweeps)
    if sweep is not None:
      return sweeps.watch(sweep, sys.stdout, args.interval, args.iterations)
    print(f"{command}: {e}", file=sys.stderr)
    return 2
  try:
    replies = [run.status()]
  except runs.RunError as e:
    print(f"{command}: {e}", file=sys.stderr)
    return 1

  def read() -> control_pb2.StatusReply:
    if replies:
      return replies.pop()
    patience = WATCH_ATTEMPTS
    while True:
      try:
        return run.status()
      except runs.RunError as e:
        # The launcher removes the token, then its coordinator goes: the end.
        if e.state in (runs.UNREACHABLE, runs.NO_TOKEN) or run.over():
          raise errors.ProgramStoppedError(str(e)) from None
        patience -= 1
        if e.state != runs.NOT_ANSWERING or not patience:
          raise

  title = f"{run.name}  launcher pid={run.info().get('launcher_pid')}"
  try:
    return live_view.watch(read, title, sys.stdout, args.interval, args.iterations)
  except runs.RunError as e:
    print(f"{command}: {e}", file=sys.stderr)
    return 1


def _only_sweep(sweeps: Any) -> Any:
  """The one running sweep when no program runs outside sweeps, else None."""
  running = sweeps.running()
  return running[0] if len(running) == 1 and not runs.current() else None


def _only_run() -> runs.Run:
  current = runs.current()
  if len(current) == 1:
    return current[0]
  if not current:
    raise LookupError("no running programs; start one with `lp launch`.")
  names = ", ".join(r.name for r in current)
  raise LookupError(f"{len(current)} programs run ({names}); name the one to watch.")


def _status(args: argparse.Namespace) -> int:
  if args.watch:
    return _watch(args)
  sweeps = importlib.import_module("launchpad.sweep.status")
  try:
    selected = [runs.find(args.run)] if args.run else runs.current()
  except LookupError as e:
    sweep = sweeps.find(args.run)
    status = sweep.read_status() if sweep is not None else None
    if status is None:
      print(f"lp status: {e}", file=sys.stderr)
      return 2
    sys.stdout.write(sweeps.table(status))
    return 0
  sweep_tables = []
  if not args.run:
    statuses = (sweep.read_status() for sweep in sweeps.running())
    sweep_tables = [sweeps.table(status) for status in statuses if status is not None]
  if not selected and not sweep_tables:
    print("no running programs")
    return 0
  tables = []
  if selected:
    # All at once: a silent run holds the others up by runs.FIRST_QUERY_SECONDS
    # (runs.QUERY_SECONDS if it looks alive) and hides none of them.
    with concurrent.futures.ThreadPoolExecutor(len(selected)) as pool:
      tables = list(pool.map(_run_table, selected))
  sys.stdout.write("".join(tables + sweep_tables))
  return 0


def _run_table(run: runs.Run) -> str:
  """What `lp status` shows of one run: a line and a table of its nodes, or
  a line whose state says what is wrong, and why below it."""
  try:
    reply = run.status()
  except runs.RunError as e:
    pid = run.info().get("launcher_pid", "-")
    return f"{run.name}  {e.state}  launcher pid={pid}\n  {e.detail}\n"
  # Nodes report their own usage once a second; nodes of this host that have
  # not reported yet are measured here.
  here = socket.gethostname()
  processes = {}
  for node in reply.nodes:
    if node.HasField("usage") or node.host != here:
      continue
    try:
      processes[node.node] = psutil.Process(node.pid)
      processes[node.node].cpu_percent(None)
    except (psutil.Error, ValueError):
      continue
  if processes:
    time.sleep(0.2)  # CPU percent is measured over this interval
  state = f"stopping: {reply.reason}" if reply.stopping else "running"
  lines = [
    f"{run.name}  program={reply.program}  {state}  launcher pid={run.info()['launcher_pid']}",
    f"  {'NODE':24} {'STATE':9} {'PID':>7} {'RESTARTS':>8} {'CPU%':>6} {'MEM MB':>8}",
  ]
  for node in reply.nodes:
    cpu, mem = "-", "-"
    process = processes.get(node.node)
    if node.HasField("usage"):
      cpu = f"{node.usage.cpu_percent:.0f}"
      mem = f"{node.usage.memory_bytes / 2**20:.0f}"
    elif process is not None:
      try:
        cpu = f"{process.cpu_percent(None):.0f}"
        mem = f"{process.memory_info().rss / 2**20:.0f}"
      except psutil.Error:
        pass
    lines.append(
      f"  {node.node:24} {node.state:9} {node.pid or '-':>7} {node.restarts:>8} {cpu:>6} {mem:>8}"
    )
    if node.HasField("metrics"):
      lines.append(f"    {live_view.metrics_line(node.metrics)}")
  return "\n".join(lines) + "\n"


def _stop(args: argparse.Namespace) -> int:
  """`lp stop NAME`: stops the running program, or the sweep, of that name."""
  sweeps = importlib.import_module("launchpad.sweep.status")
  reason = f"`lp stop {args.run}` from pid {os.getpid()}"
  sweep = sweeps.named(args.run)
  if sweep is not None:
    return _stop_sweep(sweeps, sweep, reason)
  try:
    run = runs.find(args.run)
  except LookupError as e:
    sweep = sweeps.find(args.run)
    if sweep is not None:
      return _stop_sweep(sweeps, sweep, reason)
    print(f"lp stop: {e} {sweeps.running_text()}".rstrip(), file=sys.stderr)
    return 2
  try:
    run.stop(reason)
  except runs.RunError as e:
    print(f"lp stop: {e}", file=sys.stderr)
    return 1
  print(f"stopping {run.name}")
  return 0


def _stop_sweep(sweeps: Any, sweep: Any, reason: str) -> int:
  """Asks the sweep's process to stop its running trials and end; 2 if none runs it."""
  try:
    sweeps.request_stop(sweep, reason)
  except sweeps.SweepError as e:
    print(f"lp stop: {e}", file=sys.stderr)
    return 2
  print(
    f"stopping sweep {sweep.name}: its running trials stop and run again when the same "
    "`lp sweep` command runs again"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())

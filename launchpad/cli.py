"""The `lp` command: launch programs, list running ones, stop them.

  lp launch [--mode=multiprocess|threads|test] TARGET [-- ARGS...]
  lp status [RUN]
  lp stop RUN

Exit status of `lp launch`: 0 when the program ended normally (its nodes
ended, or lp.stop() was called); 1 when a node failed (its traceback or exit
reason is printed); 2 for a bad command line or target; 128+N when stopped
by signal N (130 for Ctrl-C, 143 for SIGTERM), after a graceful stop.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import pathlib
import runpy
import sys
import time
import traceback
from typing import Any

import cloudpickle
import psutil
from absl import flags as absl_flags

from launchpad import errors, runs
from launchpad.control.client import ControlClient
from launchpad.program import Program

MODES = {
  "multiprocess": "local_mp",
  "local_mp": "local_mp",
  "test_mp": "test_mp",
  "threads": "local_mt",
  "local_mt": "local_mt",
  "test": "test_mt",
  "test_mt": "test_mt",
  "ssh": "ssh",
  "ray": "ray",
}

LAUNCH_HELP = """\
Runs a program.

TARGET is one of:
  agent.py                 runs the file's main under absl; every lp.launch
                           inside uses --mode unless it names a launch type
  agent.py:make_program    calls make_program() and launches the Program it returns
  package.module:make_program
                           the same for an importable module

Arguments after `--` reach the target's absl flags.

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

exit status: 0 program ended normally; 1 a node failed; 2 bad command line
or target; 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
"""


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  if args.command == "launch":
    return _launch(args)
  if args.command == "status":
    return _status(args)
  return _stop(args)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lp", description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  launch = commands.add_parser(
    "launch",
    help="run a program",
    description=LAUNCH_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  launch.add_argument("--mode", default="multiprocess", choices=sorted(MODES), help="launcher")
  launch.add_argument("--grace-period", type=float, default=10.0, metavar="SECONDS")
  launch.add_argument("--log-dir", type=pathlib.Path, help="run directory for node logs")
  launch.add_argument(
    "--terminal",
    default="current_terminal",
    choices=["current_terminal", "output_to_files", "tmux_session"],
    help="where node output goes besides the log files",
  )
  launch.add_argument(
    "--hosts", type=pathlib.Path, help="ssh mode: the hosts file (TOML; see docs/remote.md)"
  )
  launch.add_argument(
    "--ray-address", help="ray mode: the cluster to join (default: start a local one)"
  )
  launch.add_argument(
    "--tls",
    action="store_true",
    help="ssh and ray modes: encrypt traffic between nodes with a certificate made for this launch",
  )
  launch.add_argument("target", help="file.py, file.py:function or package.module:function")
  launch.add_argument("target_args", nargs=argparse.REMAINDER, help="-- then the target's flags")
  status = commands.add_parser("status", help="list running programs and their nodes")
  status.add_argument("run", nargs="?", help="a run name (default: every running program)")
  stop = commands.add_parser("stop", help="stop a running program gracefully")
  stop.add_argument("run", help="the run name shown by `lp status`")
  return parser


def _launch(args: argparse.Namespace) -> int:
  # The module, not the `lp.launch` function of the same name.
  launch_lib = importlib.import_module("launchpad.launch")

  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  target_args = args.target_args[1:] if args.target_args[:1] == ["--"] else args.target_args
  mode = MODES[args.mode]
  launch_lib.defaults.update(
    grace_period=args.grace_period,
    log_dir=args.log_dir,
    terminal=args.terminal,
    hosts=args.hosts,
    ray_address=args.ray_address,
    tls=args.tls,
  )
  if args.mode == "ssh" and args.hosts is None:
    print("lp launch: --mode=ssh needs --hosts HOSTS.toml (see docs/remote.md).", file=sys.stderr)
    return 2
  script_status = 0
  try:
    path, _, function = args.target.partition(":")
    if function:
      program = _program_from(path, function, target_args)
      launch_lib.launch(program, launch_type=mode)
    else:
      script_status = _run_main(path, target_args, mode)
  except (errors.ProgramError, errors.SerializationError, _BadTarget) as e:
    print(f"lp launch: {e}", file=sys.stderr)
    return 2
  if script_status:  # the target gave up: its programs must not run on
    for controller in launch_lib.launched:
      controller.stop()
  return _wait_all(launch_lib.launched) or script_status


class _BadTarget(Exception):
  """The target cannot be loaded, or does not give a program."""


def _program_from(path: str, function: str, target_args: list[str]) -> Program:
  module = _load(path)
  absl_flags.FLAGS([path, *target_args], known_only=False)
  make = getattr(module, function, None)
  if not callable(make):
    raise _BadTarget(f"{path} has no function {function!r}.")
  program = make()
  if not isinstance(program, Program):
    raise _BadTarget(f"{path}:{function}() returned {program!r}, not a lp.Program.")
  return program


def _load(path: str) -> Any:
  if path.endswith(".py"):
    if not os.path.exists(path):
      raise _BadTarget(f"no such file: {path}")
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
      raise _BadTarget(f"cannot import {path}: {e}") from e
  cloudpickle.register_pickle_by_value(module)  # node processes need not import it
  return module


def _run_main(path: str, target_args: list[str], mode: str) -> int:
  """Runs the file as __main__; returns its exit status."""
  if not os.path.exists(path):
    raise _BadTarget(f"no such file: {path}")
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
  except Exception:  # noqa: BLE001 - the target's own error: show it, then stop its programs
    traceback.print_exc()
    return 1
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


def _status(args: argparse.Namespace) -> int:
  selected = [runs.find(args.run)] if args.run else runs.running()
  if not selected:
    print("no running programs")
    return 0
  for run in selected:
    _print_run(run)
  return 0


def _print_run(run: runs.Run) -> None:
  info = run.info()
  client = ControlClient(info["coordinator"], token=run.token())
  try:
    reply = client.status()
  finally:
    client.close()
  processes = {}
  for node in reply.nodes:
    try:
      processes[node.node] = psutil.Process(node.pid)
      processes[node.node].cpu_percent(None)
    except (psutil.Error, ValueError):
      continue
  time.sleep(0.2)  # CPU percent is measured over this interval
  state = f"stopping: {reply.reason}" if reply.stopping else "running"
  print(f"{run.name}  program={reply.program}  {state}  launcher pid={info['launcher_pid']}")
  print(f"  {'NODE':24} {'STATE':9} {'PID':>7} {'RESTARTS':>8} {'CPU%':>6} {'MEM MB':>8}")
  for node in reply.nodes:
    cpu, mem = "-", "-"
    process = processes.get(node.node)
    if process is not None:
      try:
        cpu = f"{process.cpu_percent(None):.0f}"
        mem = f"{process.memory_info().rss / 2**20:.0f}"
      except psutil.Error:
        pass
    print(
      f"  {node.node:24} {node.state:9} {node.pid or '-':>7} {node.restarts:>8} {cpu:>6} {mem:>8}"
    )


def _stop(args: argparse.Namespace) -> int:
  try:
    run = runs.find(args.run)
  except LookupError as e:
    print(f"lp stop: {e}", file=sys.stderr)
    return 2
  client = ControlClient(run.info()["coordinator"], token=run.token())
  try:
    client.stop(f"`lp stop {run.name}` from pid {os.getpid()}")
  finally:
    client.close()
  print(f"stopping {run.name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

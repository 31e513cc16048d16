"""The launchers `lp.launch` knows, in one table of names.

Each entry names a launcher object (see `session.Launcher`) by module and
attribute, imported the first time a program is launched with it, so that
`import launchpad` loads no launcher (and no Ray). Launchpad's names for the
launch types are aliases of ours. The test kinds run the same launcher
without touching signals and without keeping the process alive for the
program (a test stops it).

A package adds a launcher without touching launchpad, through the
`launchpad.launchers` entry-point group; the entry's name is the launch type:

    [project.entry-points."launchpad.launchers"]
    mycloud = "mypackage.launcher:LAUNCHER"

and then `lp.launch(program, launch_type='mycloud', ...)` or
`lp launch --mode=mycloud agent.py`.

A launcher's options are the fields of its options dataclass. Those whose
metadata holds a `flag(...)` are flags of `lp launch` and `lp sweep` too,
named after the field (`--queue` for `queue`), listed under the launcher in
`lp launch --help`: launchpad's command line knows no launcher's options.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

from launchpad import errors

ENTRY_POINT_GROUP = "launchpad.launchers"
# The key, in an options field's metadata, of its Flag.
FLAG_METADATA = "launchpad.flag"


@dataclasses.dataclass(frozen=True)
class Flag:
  """An option of a launcher as the `lp` command line takes it.

  Declared with `flag(...)`; the field fills in the rest: the flag is named
  after it, and a bool field is a switch (`--detach` sets a field that
  defaults to False; `--no-shared-filesystem` clears one that defaults to
  True). A flag left out leaves the option to the lp.launch call, or to the
  launcher's default.
  """

  help: str
  name: str = ""  # "--queue"
  type: Callable[[str], Any] = str  # reads the value of a flag that takes one
  metavar: str | None = None
  switch: bool | None = None  # the value a switch sets; None: the flag takes a value
  required: bool = False  # the launch type cannot run without it
  see: str = ""  # the page that explains it, named in its help and errors
  in_sweeps: bool = True  # `lp sweep` takes it too (False: it makes no sense for a trial)
  option: str = ""  # the field it sets


def flag(
  help: str,
  *,
  type: Callable[[str], Any] = str,
  metavar: str | None = None,
  required: bool = False,
  see: str = "",
  in_sweeps: bool = True,
) -> dict[str, Flag]:
  """The metadata of an options field that `lp launch` sets with a flag, as
  in `dataclasses.field(default="default", metadata=registry.flag("the queue"))`."""
  return {
    FLAG_METADATA: Flag(
      help, type=type, metavar=metavar, required=required, see=see, in_sweeps=in_sweeps
    )
  }


def _flag_of(field: dataclasses.Field) -> Flag:
  """The field's declared Flag, with its name, kind and option filled in."""
  declared = field.metadata[FLAG_METADATA]
  stem = field.name.replace("_", "-")
  if isinstance(field.default, bool):
    name = f"--no-{stem}" if field.default else f"--{stem}"
    return dataclasses.replace(declared, name=name, switch=not field.default, option=field.name)
  metavar = declared.metavar or field.name.upper()
  return dataclasses.replace(declared, name=f"--{stem}", metavar=metavar, option=field.name)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A launch type: the launcher that runs it, and how."""

  name: str
  target: str  # "module:attribute" of the launcher object
  aliases: tuple[str, ...] = ()
  local: bool = False  # every node on this machine (Launchpad's is_local_launch)
  testing: bool = False  # no signal handling; the process is not held for the program
  summary: str = ""
  refusal: str = ""  # for Launchpad's types that cannot run here: what to use instead
  # "module:attribute" of the options dataclass, where importing the
  # launcher would be costly (its flags are read by every `lp launch`)
  options: str = ""

  def load(self) -> Any:
    """The launcher object (importing its module)."""
    if self.refusal:
      raise errors.LaunchpadError(f"launch type {self.name!r} {self.refusal}")
    module, _, attribute = self.target.partition(":")
    try:
      return getattr(importlib.import_module(module), attribute)
    except ImportError as e:
      raise errors.LaunchpadError(f"launch type {self.name!r} cannot be used here: {e}") from e

  def flags(self) -> list[Flag]:
    """The options of this launch type that the `lp` command line sets (`flag()`)."""
    if self.options and not self.refusal:
      module, _, attribute = self.options.partition(":")
      options = getattr(importlib.import_module(module), attribute)
    else:
      options = self.load().options
    return [_flag_of(f) for f in dataclasses.fields(options) if FLAG_METADATA in f.metadata]


_XMANAGER = "runs nodes through xmanager, which this launchpad does not have; use "
BUILT_IN = (
  Entry(
    "threads",
    "launchpad.launch.threads:LAUNCHER",
    ("local_mt",),
    local=True,
    summary="every node a thread of this process",
  ),
  Entry(
    "test",
    "launchpad.launch.threads:LAUNCHER",
    ("test_mt",),
    testing=True,
    summary="threads, for tests: no signal handling",
  ),
  Entry(
    "multiprocess",
    "launchpad.launch.processes:LAUNCHER",
    ("local_mp",),
    local=True,
    summary="every node a process of this host",
  ),
  Entry(
    "test_mp",
    "launchpad.launch.processes:LAUNCHER",
    testing=True,
    summary="processes, for tests: no signal handling",
  ),
  Entry("ssh", "launchpad.launch.ssh:LAUNCHER", summary="nodes on the hosts of a hosts file"),
  Entry(
    "ray",
    "launchpad.launch.ray:LAUNCHER",
    summary="every node a Ray actor",
    options="launchpad.launch.ray_options:RayOptions",
  ),
  Entry("slurm", "launchpad.launch.slurm:LAUNCHER", summary="every node a Slurm task"),
  Entry(
    "vertex_ai",
    "",
    refusal=_XMANAGER + "launch_type='ray' (a Ray or KubeRay cluster), 'slurm' or 'ssh' "
    "(your own hosts).",
  ),
  Entry(
    "local_docker",
    "",
    refusal=_XMANAGER + "launch_type='local_mp' (one process per node; lp.PythonProcess sets "
    "each group's environment and interpreter).",
  ),
)


def entries() -> list[Entry]:
  """Every launch type: the built-in ones, then those of installed packages."""
  found = list(BUILT_IN)
  taken = {name for entry in found for name in (entry.name, *entry.aliases)}
  for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
    if point.name not in taken:
      found.append(
        Entry(
          point.name, point.value, summary=f"from {point.dist.name if point.dist else point.value}"
        )
      )
      taken.add(point.name)
  return found


def launchers() -> list[Entry]:
  """The launch types that can run here, one per launcher (threads, not
  also test, which runs the same launcher)."""
  found: dict[str, Entry] = {}
  for entry in entries():
    if not entry.refusal:
      found.setdefault(entry.target, entry)
  return list(found.values())


def names(runnable: bool = True) -> list[str]:
  """Every name a launch type answers to, sorted; with `runnable`, only
  those that can run here."""
  return sorted(
    name
    for entry in entries()
    if not (runnable and entry.refusal)
    for name in (entry.name, *entry.aliases)
  )


def find(name: str) -> Entry:
  """The launch type called `name` (ours or Launchpad's name), or an error listing them."""
  for entry in entries():
    if name == entry.name or name in entry.aliases:
      return entry
  raise ValueError(f"unknown launch type {name!r}; use one of: {', '.join(names())}.")


def flag_value(name: str) -> str:
  """The value of `--lp_launch_type` for the launch type `name`: Launchpad's
  name where it has one (code written for Launchpad compares with those)."""
  entry = find(name)
  return entry.aliases[0] if entry.aliases else entry.name

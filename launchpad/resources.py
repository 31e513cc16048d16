"""Per-group settings for launchers (`local_resources={label: ...}`)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from launchpad import errors


@dataclasses.dataclass(frozen=True)
class PythonProcess:
  """How the processes of one group start.

  The fields come in Launchpad's order (`args`, then `env`).

  Attributes:
    args: command-line arguments of the node's process (absl flags its code
      reads): a sequence of strings, or Launchpad's dict, which becomes
      `--key=value` (`--key` / `--nokey` for booleans).
    env: environment variables set in the node's process (e.g.
      {'CUDA_VISIBLE_DEVICES': 0}), before the node's code runs; numbers
      become strings, as in Launchpad.
    interpreter: the Python executable to run the node with; launchpad must
      be installed for it. Default: the launcher's own.
  """

  args: tuple[str, ...] | Mapping[str, Any] = ()
  env: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  interpreter: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "args", _command_line(self.args))
    object.__setattr__(self, "env", _environment(self.env))


def _command_line(args: Any) -> tuple[str, ...]:
  if isinstance(args, Mapping):
    return tuple(_flag(key, value) for key, value in args.items())
  if isinstance(args, str) or not isinstance(args, Iterable):
    raise TypeError(
      f"PythonProcess args must be a list of strings or a dict of flags, got {args!r}."
    )
  args = tuple(args)
  for arg in args:
    if not isinstance(arg, str):
      raise TypeError(f"PythonProcess args must be strings; got {arg!r} in {args!r}.")
  return args


def _flag(key: Any, value: Any) -> str:
  if not isinstance(key, str) or not key:
    raise TypeError(f"PythonProcess args: flag names are non-empty strings, got {key!r}.")
  if isinstance(value, bool):
    return f"--{key}" if value else f"--no{key}"
  return f"--{key}={value}"


def _environment(env: Any) -> dict[str, str]:
  if not isinstance(env, Mapping):
    raise TypeError(f"PythonProcess env must be a dict of variables, got {env!r}.")
  result = {}
  for key, value in env.items():
    if (
      not isinstance(key, str)
      or isinstance(value, bool)
      or not isinstance(value, str | int | float)
    ):
      raise TypeError(
        f"PythonProcess env maps variable names to strings or numbers; got {key!r}: {value!r}."
      )
    result[key] = str(value)
  return result


@dataclasses.dataclass(frozen=True)
class RayResources:
  """What each Ray actor of one group asks its cluster for (`launch_type='ray'`).

  Attributes:
    num_cpus: CPUs reserved per node. The default is a tenth of a core so
      that a program of many light nodes fits on a laptop; give real numbers
      to nodes that compute.
    num_gpus: GPUs per node; Ray sets CUDA_VISIBLE_DEVICES in the node's actor.
    resources: custom resources per node, as the cluster's nodes declare
      them (`ray start --resources`, a KubeRay group's rayStartParams),
      e.g. {'TPU': 4}.
    placement_strategy: reserve the group's resources together in one Ray
      placement group, one bundle (the above) per node, before its actors
      start: 'PACK' (on as few Ray nodes as possible), 'SPREAD' (on as many
      as possible), 'STRICT_PACK' (all on one Ray node), 'STRICT_SPREAD'
      (each on a different Ray node). Default None: each actor is placed
      on its own.
    placement_timeout: seconds the launch waits for the placement group to
      be placed before it fails naming the group (an autoscaling cluster
      may need minutes to add nodes).
  """

  num_cpus: float = 0.1
  num_gpus: float = 0.0
  resources: dict[str, float] = dataclasses.field(default_factory=dict)
  placement_strategy: str | None = None
  placement_timeout: float = 60.0

  def __post_init__(self):
    _check_amount("num_cpus", self.num_cpus)
    _check_amount("num_gpus", self.num_gpus)
    if not isinstance(self.resources, dict):
      raise TypeError(f"RayResources resources must be a dict, got {self.resources!r}.")
    for name, amount in self.resources.items():
      if not isinstance(name, str):
        raise TypeError(f"RayResources resources are named by strings, got {name!r}.")
      if name in ("CPU", "GPU"):
        raise ValueError(
          f"RayResources resources names {name!r}: ask for CPUs and GPUs with num_cpus and "
          "num_gpus."
        )
      _check_amount(f"resources[{name!r}]", amount)
    _check_placement(self)

  def bundle(self) -> dict[str, float]:
    """What one node reserves, as a Ray placement group bundle: the amounts above 0."""
    wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
    return {name: float(amount) for name, amount in wanted.items() if amount > 0}


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _check_placement(resources: RayResources) -> None:
  strategy = resources.placement_strategy
  if strategy is not None and strategy not in PLACEMENT_STRATEGIES:
    raise ValueError(
      f"RayResources placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)} "
      f"(or None: no placement group), got {strategy!r}."
    )
  _check_amount("placement_timeout", resources.placement_timeout)
  if not resources.placement_timeout > 0:
    raise ValueError(
      f"RayResources placement_timeout must be > 0 seconds, got {resources.placement_timeout!r}."
    )
  if strategy is not None and not resources.bundle():
    raise ValueError(
      f"RayResources placement_strategy={strategy!r} reserves each node's num_cpus, num_gpus "
      "and resources, which are all 0: Ray refuses empty bundles; give the group something "
      "to reserve (e.g. num_cpus=0.1)."
    )


@dataclasses.dataclass(frozen=True)
class SlurmResources:
  """What each node of one group asks Slurm for (`launch_type='slurm'`).

  Groups that ask for the same resources share one Slurm job (allocation),
  of one task per node; each node then runs as a job step of its own in it.

  Attributes:
    cpus: CPUs per node (`--cpus-per-task`).
    gpus: GPUs per node, as the cluster's GRES `gpu`; Slurm sets
      CUDA_VISIBLE_DEVICES in the node's process.
    mem: memory per node: megabytes as a number, or Slurm's form with a
      unit, '500M', '4G'. Default: the cluster's default.
    time: the job's time limit, as Slurm takes it: minutes as a number, or
      'HH:MM:SS', 'D-HH:MM', ... Default: the partition's.
    partition, account, constraint: the job's `--partition`, `--account`
      and `--constraint` (node features); default: the cluster's.
    sbatch_options: any other sbatch options for the group's job, e.g.
      ['--qos=high', '--exclusive'].
  """

  cpus: int = 1
  gpus: int = 0
  mem: int | str | None = None
  time: int | str | None = None
  partition: str | None = None
  account: str | None = None
  constraint: str | None = None
  sbatch_options: tuple[str, ...] = ()

  def __post_init__(self):
    for name, least in (("cpus", 1), ("gpus", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"SlurmResources {name} must be a whole number >= {least}, got {value!r}.")
    if self.mem is not None:
      slurm_megabytes(self.mem)  # raises, saying what is accepted
    if self.time is not None:
      slurm_seconds(self.time)
    for name in ("partition", "account", "constraint"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"SlurmResources {name} must be a non-empty string, got {value!r}.")
    options = self.sbatch_options
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
      raise TypeError(
        f"SlurmResources sbatch_options must be a list of strings, got {options!r}; e.g. "
        "['--qos=high']."
      )
    object.__setattr__(self, "sbatch_options", tuple(options))
    for option in self.sbatch_options:
      field = _SLURM_FIELDS.get(option.split("=", 1)[0])
      if field is not None:
        raise ValueError(
          f"SlurmResources sbatch_options has {option!r}: the launcher sets it from the "
          f"group's nodes and resources; use the field {field} instead."
        )


# sbatch options the Slurm launcher sets itself, and the field that says what they should be.
_SLURM_FIELDS = {
  "-n": "(one task per node)",
  "--ntasks": "(one task per node)",
  "-c": "cpus",
  "--cpus-per-task": "cpus",
  "--gres": "gpus",
  "-G": "gpus",
  "--gpus": "gpus",
  "--gpus-per-task": "gpus",
  "--mem": "mem",
  "--mem-per-cpu": "mem",
  "-t": "time",
  "--time": "time",
  "-p": "partition",
  "--partition": "partition",
  "-A": "account",
  "--account": "account",
  "-C": "constraint",
  "--constraint": "constraint",
  "-J": "(the job is named after the program)",
  "--job-name": "(the job is named after the program)",
  "-o": "(the job's output goes to the run directory)",
  "--output": "(the job's output goes to the run directory)",
  "--signal": "preempt_signal (an lp.launch option of the slurm launcher)",
}
_MEGABYTES = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def slurm_megabytes(mem: Any) -> int:
  """Megabytes of a SlurmResources mem value (a number of MB, or '4G')."""
  if isinstance(mem, int) and not isinstance(mem, bool) and mem > 0:
    return mem
  text = mem.strip().upper() if isinstance(mem, str) else ""
  unit = text[-1:] if text[-1:] in _MEGABYTES else "M"
  number = text[:-1] if text[-1:] in _MEGABYTES else text
  if not number.isdigit() or int(number) == 0:
    raise ValueError(
      f"SlurmResources mem must be megabytes (a number > 0) or a size with its unit, such "
      f"as '500M' or '4G'; got {mem!r}."
    )
  return max(1, math.ceil(int(number) * _MEGABYTES[unit]))


def slurm_seconds(time_limit: Any) -> int:
  """Seconds of a Slurm time limit: minutes as a number, or 'MM:SS',
  'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'."""
  if isinstance(time_limit, int) and not isinstance(time_limit, bool) and time_limit > 0:
    return time_limit * 60
  text = time_limit.strip() if isinstance(time_limit, str) else ""
  days, dash, clock = text.rpartition("-")
  parts = clock.split(":")
  numbers = [days, *parts] if dash else parts
  if not all(n.isdigit() for n in numbers) or len(parts) > 3:
    seconds = 0
  elif dash:  # D-HH, D-HH:MM, D-HH:MM:SS
    scale = (3600, 60, 1)
    seconds = int(days) * 86400 + sum(int(p) * s for p, s in zip(parts, scale, strict=False))
  else:  # MM, MM:SS, HH:MM:SS
    scale = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    seconds = sum(int(p) * s for p, s in zip(parts, scale, strict=True))
  if seconds <= 0:
    raise ValueError(
      f"SlurmResources time must be minutes (a number > 0) or one of Slurm's forms, such as "
      f"'30:00', '2:00:00' or '1-12:00:00'; got {time_limit!r}."
    )
  return seconds


@dataclasses.dataclass(frozen=True)
class DockerConfig:
  """Launchpad's settings of a group's Docker container under xmanager
  (Vertex AI). Accepted, with a warning, so that code building them (Acme's
  make_xm_docker_resources) runs; they only ever reach `xm_resources`,
  which is ignored here.

  Containers here: run each group with `local_resources={label:
  lp.PythonProcess(interpreter=...)}` pointing into the container's Python,
  or on a Ray cluster whose workers run your image (launch_type='ray').
  """

  code_directory: str | None = None
  docker_requirements: str | None = None
  hw_requirements: Any = None
  python_path: list[str] | None = None

  def __post_init__(self):
    warnings.warn(
      "lp.DockerConfig configures xmanager (Vertex AI) containers, which this launchpad does "
      "not run: it is ignored. Give groups an interpreter with lp.PythonProcess(interpreter="
      "...) or run on a Ray cluster (launch_type='ray').",
      stacklevel=3,
    )


def _check_amount(what: str, amount: Any) -> None:
  if isinstance(amount, bool) or not isinstance(amount, int | float):
    raise TypeError(f"RayResources {what} must be a number, got {amount!r}.")
  if not amount >= 0:
    raise ValueError(f"RayResources {what} must be >= 0, got {amount!r}.")


def by_group(
  program: str, groups: set[str], local_resources: dict[str, Any], kind: type, launcher: str
) -> dict[str, Any]:
  """Checks a launcher's `local_resources`: each key a group of the program,
  each value a `kind`; returns them as a dict."""
  for group, resource in local_resources.items():
    if group not in groups:
      raise errors.ProgramError(
        f"local_resources names group {group!r}, which program {program} does not "
        f"have; its groups are: {', '.join(sorted(groups))}."
      )
    if not isinstance(resource, kind):
      raise TypeError(
        f"local_resources[{group!r}] is a {type(resource).__name__}; the {launcher} "
        f"launcher takes lp.{kind.__name__}(...)."
      )
  return dict(local_resources)

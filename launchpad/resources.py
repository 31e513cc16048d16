"""Per-group settings for launchers (`local_resources={label: ...}`)."""

from __future__ import annotations

import dataclasses
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

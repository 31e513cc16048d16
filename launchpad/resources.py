"""Per-group settings for launchers (`local_resources={label: ...}`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from launchpad import errors


@dataclasses.dataclass(frozen=True)
class PythonProcess:
  """How the processes of one group start.

  Attributes:
    env: environment variables set in the node's process (e.g.
      {'CUDA_VISIBLE_DEVICES': '0'}), before the node's code runs.
    args: command-line arguments of the node's process (absl flags its code reads).
    interpreter: the Python executable to run the node with; launchpad must
      be installed for it. Default: the launcher's own.
  """

  env: dict[str, str] = dataclasses.field(default_factory=dict)
  args: tuple[str, ...] = ()
  interpreter: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "args", tuple(self.args))
    for key, value in self.env.items():
      if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"PythonProcess env must map str to str; got {key!r}: {value!r}.")


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
  """

  num_cpus: float = 0.1
  num_gpus: float = 0.0
  resources: dict[str, float] = dataclasses.field(default_factory=dict)

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

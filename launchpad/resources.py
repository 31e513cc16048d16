"""Per-group settings for process launchers (`local_resources={label: ...}`)."""

from __future__ import annotations

import dataclasses


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

"""Launch types and the absl flag `--lp_launch_type` that picks one."""

from __future__ import annotations

import enum

from absl import flags


class LaunchType(enum.Enum):
  """Launchpad's names for the ways to run a program."""

  LOCAL_MULTI_THREADING = "local_mt"
  LOCAL_MULTI_PROCESSING = "local_mp"
  TEST_MULTI_THREADING = "test_mt"
  TEST_MULTI_PROCESSING = "test_mp"
  SSH = "ssh"
  RAY = "ray"


LAUNCH_TYPE = flags.DEFINE_string(
  "lp_launch_type",
  LaunchType.LOCAL_MULTI_THREADING.value,
  "How lp.launch runs programs: threads (local_mt), test (test_mt), ...",
)


def default_launch_type() -> str:
  """The flag's value once absl parsed the command line, else local_mt."""
  return LAUNCH_TYPE.value if flags.FLAGS.is_parsed() else LAUNCH_TYPE.default

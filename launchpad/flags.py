"""Launch types, and the absl flag `--lp_launch_type` that picks one."""

from __future__ import annotations

import enum

from absl import flags

from launchpad.launch import registry


class LaunchType(enum.Enum):
  """Launchpad's names for the ways to run a program.

  LOCAL_DOCKER and VERTEX_AI run nodes through xmanager, which this library
  does not have: lp.launch refuses them and says what to use instead.
  """

  LOCAL_MULTI_THREADING = "local_mt"
  LOCAL_MULTI_PROCESSING = "local_mp"
  TEST_MULTI_THREADING = "test_mt"
  TEST_MULTI_PROCESSING = "test_mp"
  SSH = "ssh"
  RAY = "ray"
  SLURM = "slurm"
  LOCAL_DOCKER = "local_docker"
  VERTEX_AI = "vertex_ai"


LAUNCH_TYPE = flags.DEFINE_string(
  "lp_launch_type",
  LaunchType.LOCAL_MULTI_THREADING.value,
  "How lp.launch runs programs: threads (local_mt), test (test_mt), ...",
)


def default_launch_type() -> str:
  """The flag's value once absl parsed the command line, else local_mt."""
  return LAUNCH_TYPE.value if flags.FLAGS.is_parsed() else LAUNCH_TYPE.default


def is_local_launch(launch_type: str | LaunchType) -> bool:
  """True for the launch types that run every node on this machine, outside
  tests: local_mt and local_mp (threads, multiprocess).

  With `--lp_launch_type`, call it as `is_local_launch(lp.LAUNCH_TYPE.value)`.
  """
  return registry.find(_name(launch_type)).local


def is_local_launch_or_test(launch_type: str | LaunchType) -> bool:
  """True for local_mt and local_mp, and for the test launch types test_mt
  and test_mp."""
  entry = registry.find(_name(launch_type))
  return entry.local or entry.testing


def _name(launch_type: str | LaunchType) -> str:
  return launch_type.value if isinstance(launch_type, LaunchType) else launch_type

"""launchpad: distributed programs for machine-learning research.

`import launchpad as lp`, then build a `lp.Program` of nodes and `lp.launch` it.
Every public name of DeepMind Launchpad's `launchpad` module is here too
(docs/compatibility.md says how each behaves).
"""

from launchpad import flags
from launchpad.address import (
  AbstractAddressBuilder,
  Address,
  SimpleLocalAddressBuilder,
  get_port_from_address,
)
from launchpad.context import (
  make_program_stopper,
  register_stop_handler,
  stop,
  stop_event,
  unregister_stop_handler,
  wait_for_stop,
)
from launchpad.courier.batching import batched_handler
from launchpad.courier.client import Client as CourierClient
from launchpad.errors import (
  CallTimeoutError,
  ConnectionLostError,
  HostError,
  LaunchpadError,
  NodeFailedError,
  ProgramError,
  ProgramStoppedError,
  RemoteError,
  SerializationError,
)
from launchpad.flags import LAUNCH_TYPE, LaunchType, is_local_launch, is_local_launch_or_test
from launchpad.handles import Deferred, Handle
from launchpad.launch import launch
from launchpad.nodes.base import Node
from launchpad.nodes.colocation import MultiProcessingColocation, MultiThreadingColocation
from launchpad.nodes.courier import CourierHandle, CourierNode
from launchpad.nodes.python import PyClassNode, PyNode
from launchpad.program import Program, make_program
from launchpad.resources import DockerConfig, PythonProcess, RayResources, SlurmResources
from launchpad.sweep import report, sweep
from launchpad.tls import TlsConfig

__all__ = [
  "LAUNCH_TYPE",
  "AbstractAddressBuilder",
  "Address",
  "BroadcastNode",
  "CallTimeoutError",
  "ConnectionLostError",
  "Controller",
  "CourierClient",
  "CourierHandle",
  "CourierNode",
  "Deferred",
  "DockerConfig",
  "Handle",
  "HostError",
  "LaunchType",
  "LaunchpadError",
  "MultiProcessingColocation",
  "MultiThreadingColocation",
  "Node",
  "NodeFailedError",
  "Program",
  "ProgramError",
  "ProgramStoppedError",
  "PyClassNode",
  "PyNode",
  "PythonProcess",
  "RayResources",
  "RemoteError",
  "ReplayNode",
  "ReverbNode",
  "SerializationError",
  "SimpleLocalAddressBuilder",
  "SlurmResources",
  "TlsConfig",
  "batched_handler",
  "flags",
  "get_port_from_address",
  "is_local_launch",
  "is_local_launch_or_test",
  "launch",
  "make_program",
  "make_program_stopper",
  "register_stop_handler",
  "report",
  "stop",
  "stop_event",
  "sweep",
  "unregister_stop_handler",
  "wait_for_stop",
]


def __getattr__(name: str):
  # The replay service needs numpy, and ReverbNode may import dm-reverb; a
  # program without them (and each of its node processes) should not pay
  # their memory.
  if name == "ReplayNode":
    from launchpad.nodes.replay import ReplayNode

    return ReplayNode
  # The broadcast pickles and maps numpy arrays; it is loaded where it is used.
  if name == "BroadcastNode":
    from launchpad.nodes.broadcast import BroadcastNode

    return BroadcastNode
  if name == "ReverbNode":
    from launchpad.nodes.reverb import ReverbNode

    return ReverbNode
  # The controller holds the coordinator, gRPC: building a program imports neither.
  if name == "Controller":
    from launchpad.launch.controller import Controller

    return Controller
  raise AttributeError(f"module 'launchpad' has no attribute {name!r}")

"""launchpad: distributed programs for machine-learning research.

`import launchpad as lp`, then build a `lp.Program` of nodes and `lp.launch` it.
"""

from launchpad.context import (
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
from launchpad.flags import LaunchType
from launchpad.handles import Deferred, Handle
from launchpad.launch import launch
from launchpad.launch.controller import Controller
from launchpad.nodes.base import Node
from launchpad.nodes.colocation import MultiProcessingColocation, MultiThreadingColocation
from launchpad.nodes.courier import CourierHandle, CourierNode
from launchpad.nodes.python import PyClassNode, PyNode
from launchpad.program import Program, make_program
from launchpad.resources import PythonProcess, RayResources
from launchpad.tls import TlsConfig

__all__ = [
  "CallTimeoutError",
  "ConnectionLostError",
  "Controller",
  "CourierClient",
  "CourierHandle",
  "CourierNode",
  "Deferred",
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
  "SerializationError",
  "TlsConfig",
  "batched_handler",
  "launch",
  "make_program",
  "register_stop_handler",
  "stop",
  "stop_event",
  "unregister_stop_handler",
  "wait_for_stop",
]


def __getattr__(name: str):
  # The replay service needs numpy; a program without replay nodes (and each
  # of its node processes) should not pay its memory for it.
  if name == "ReplayNode":
    from launchpad.nodes.replay import ReplayNode

    return ReplayNode
  raise AttributeError(f"module 'launchpad' has no attribute {name!r}")

"""The exceptions launchpad raises, in one place so users can catch them."""

from __future__ import annotations


class LaunchpadError(Exception):
  """Base class of every error raised by launchpad itself."""


class ProgramError(LaunchpadError, ValueError):
  """The program definition is invalid; raised before anything runs."""


class SerializationError(LaunchpadError, TypeError):
  """A value that must travel to another node cannot be pickled."""


class RemoteError(LaunchpadError):
  """A remote call raised an exception that could not be rebuilt here.

  Attributes:
    node: the node that raised (`label[index]`).
    type_name: the qualified name of the remote exception's type.
    remote_traceback: the traceback text formatted in the remote node.
  """

  def __init__(self, node: str, type_name: str, message: str, remote_traceback: str):
    super().__init__(f"{type_name}: {message} (raised in node {node})")
    self.node = node
    self.type_name = type_name
    self.remote_traceback = remote_traceback


class CallTimeoutError(LaunchpadError, TimeoutError):
  """A remote call, or the wait for its server, did not finish in time."""


class ConnectionLostError(LaunchpadError, ConnectionError):
  """The connection to a node broke while a call was in flight."""


class ClientClosedError(LaunchpadError, RuntimeError):
  """A call on a courier client after its `close()`, or cut short by it."""


class AuthenticationError(LaunchpadError, PermissionError):
  """The peer does not know this program's secret."""


class HostError(LaunchpadError, ConnectionError):
  """A host of the SSH launcher cannot be reached, or cannot run nodes."""


class ProgramStoppedError(LaunchpadError):
  """The program stopped while a call or a wait was in progress."""


class NodeFailedError(LaunchpadError, RuntimeError):
  """A node of the program raised or died (a RuntimeError, as Launchpad's are).

  Attributes:
    node: the failed node (`label[index]`).
    remote_traceback: the node's traceback text (or its exit reason).
  """

  def __init__(self, node: str, description: str, remote_traceback: str):
    super().__init__(f"node {node} failed: {description}\n{remote_traceback}")
    self.node = node
    self.description = description
    self.remote_traceback = remote_traceback


class RemoteTraceback(Exception):
  """Carries a remote node's traceback text as the cause of a rebuilt exception."""

  def __init__(self, node: str, text: str):
    super().__init__(node, text)
    self.node = node
    self.text = text

  def __str__(self) -> str:
    return f"\n\nTraceback in node {self.node}:\n{self.text}"

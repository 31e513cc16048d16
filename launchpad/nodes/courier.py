"""CourierNode: a Python object whose public methods others call by RPC."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launchpad import context, handles
from launchpad.control.client import host_id
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from launchpad.nodes.python import PyClassNode

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime


# How long a stopping node waits for calls in progress to reply.
STOP_DRAIN_SECONDS = 2.0


class CourierNode(PyClassNode):
  """Serves the public methods (and `__call__`) of `cls(*args, **kwargs)`.

  Without a `run()` (or after `disable_run()`) the node serves until the
  program stops; with one, it serves while `run()` runs and stops serving when
  it returns.
  """

  def __init__(self, cls: Callable[..., Any], *args: Any, **kwargs: Any):
    super().__init__(cls, *args, **kwargs)

  def create_handle(self) -> CourierHandle:
    return CourierHandle(self)

  def run(self, runtime: ProgramRuntime) -> None:
    instance = self.build(runtime)
    server = Server(
      instance,
      secret=runtime.secret,
      label=self.name or "courier",
      host=runtime.host,
      tls=runtime.tls,
      initializer=functools.partial(context.set_node, context.NodeContext(self.name, runtime)),
    )
    server.start(previous=runtime.control.previous_addresses(self.name))
    runtime.stats.track_server(self.name, server)
    try:
      runtime.control.register(self.name, [a for a in (server.address, server.local_address) if a])
      run = getattr(instance, "run", None)
      if self.run_enabled and callable(run):
        run()
      else:
        runtime.stop_event.wait()
    finally:
      runtime.stats.forget(self.name)
      # Calls that the stop woke (or that were about to end) send their
      # replies before the connections close.
      server.drain(STOP_DRAIN_SECONDS)
      server.stop()


class CourierHandle(handles.Handle):
  """The handle of a CourierNode; dereferences to a courier `Client`."""

  def connect(self, runtime: ProgramRuntime) -> Client:
    return Client(
      _Resolver(runtime, self.node_name),
      secret=runtime.secret,
      label=self.node_name,
      tls=runtime.tls,
    )


class _Resolver:
  """Finds a node's address through the coordinator; same-host callers get
  its Unix socket."""

  waits = True

  def __init__(self, runtime: ProgramRuntime, node: str):
    self._runtime = runtime
    self._node = node
    self._address: str | None = None

  def resolve(self, timeout: float | None) -> str:
    if self._address is None:
      endpoint = self._runtime.control.resolve(self._node, timeout)
      addresses = list(endpoint.addresses)
      local = [a for a in addresses if a.startswith("unix:")]
      self._address = local[0] if local and endpoint.host_id == host_id() else addresses[0]
    return self._address

  def forget(self) -> None:
    self._address = None

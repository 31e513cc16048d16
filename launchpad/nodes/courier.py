"""CourierNode: a Python object whose public methods others call by RPC."""

from __future__ import annotations

import datetime
import functools
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from launchpad import context, handles
from launchpad.courier.client import Client
from launchpad.courier.server import Server, public_methods
from launchpad.host_identity import host_id
from launchpad.nodes.base import Node
from launchpad.nodes.python import PyClassNode

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime


# How long a stopping node waits for calls in progress to reply.
STOP_DRAIN_SECONDS = 2.0

# Launchpad's courier server options, and what each does here.
SERVER_OPTIONS = {
  "port": "the TCP port to serve on (default: any free port, registered with the coordinator)",
  "thread_pool_size": "how many requests may run the object's methods at the same time",
  "name": "accepted and unused: servers are found through the coordinator by node name",
}
# Launchpad's courier client options, and what each does here.
CLIENT_OPTIONS = {
  "call_timeout": "seconds (or a timedelta) a call may take; None or 0: no limit",
  "wait_for_ready": "accepted: calls always wait for the server to register",
  "compress": "accepted and unused: nothing is compressed",
  "chunk_tensors": "accepted and unused",
  "load_balancing_policy": "accepted and unused: a handle names one node",
  "propagate_deadline": "accepted and unused",
}


class CourierNode(PyClassNode):
  """Serves the public methods (and `__call__`) of `cls(*args, **kwargs)`.

  Without a `run()` (or after `disable_run()`) the node serves until the
  program stops; with one, it serves while `run()` runs and stops serving when
  it returns.

  Args:
    cls: the class (or function) that builds the served object, called inside
      the node with `args` and `kwargs`, handles in them dereferenced.
    courier_kwargs: options of the node's server, as Launchpad names them
      (SERVER_OPTIONS): `port`, and `thread_pool_size`, which bounds how many
      requests run the object's methods at once (the others wait their turn).
      This server has no pool otherwise: requests run in the thread of their
      connection and long ones get a thread of their own, so no number of
      waiting calls (a `batched_handler` filling its batch) can exhaust it.
    courier_client_kwargs: options of the clients its handles dereference to
      (CLIENT_OPTIONS): `call_timeout` limits every call.
  """

  def __init__(
    self,
    cls: Callable[..., Any],
    /,
    *args: Any,
    courier_kwargs: Mapping[str, Any] | None = None,
    courier_client_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
  ):
    super().__init__(cls, *args, **kwargs)
    what = f"lp.{type(self).__name__}({getattr(cls, '__name__', cls)!r})"
    self.courier_kwargs = _check_options(what, "courier_kwargs", courier_kwargs, SERVER_OPTIONS)
    self.courier_client_kwargs = client_options(what, courier_client_kwargs)
    pool = self.courier_kwargs.get("thread_pool_size")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
      raise ValueError(
        f"{what}: courier_kwargs['thread_pool_size'] must be an int >= 1, got {pool!r}."
      )

  def create_handle(self) -> CourierHandle:
    return CourierHandle(self)

  def run(self, runtime: ProgramRuntime) -> None:
    instance = self.build(runtime)
    pool = self.courier_kwargs.get("thread_pool_size")
    server = Server(
      instance if pool is None else limited(instance, pool),
      secret=runtime.secret,
      label=self.name or "courier",
      host=runtime.host,
      port=self.courier_kwargs.get("port", 0),
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

  def __init__(self, node: Node):
    super().__init__(node)
    # Nodes other than CourierNodes (ReverbNode) have no client options.
    self.client_kwargs = dict(getattr(node, "courier_client_kwargs", {}))

  def set_client_kwargs(self, **kwargs: Any) -> None:
    """Replaces the client options (CLIENT_OPTIONS) of this handle's clients."""
    self.client_kwargs = client_options(repr(self), kwargs)

  def connect(self, runtime: ProgramRuntime) -> Client:
    return Client(
      _Resolver(runtime, self.node_name),
      secret=runtime.secret,
      label=self.node_name,
      timeout=call_timeout(self.client_kwargs.get("call_timeout")),
      tls=runtime.tls,
    )


def client_options(what: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
  """Checks Launchpad client options; names `what` and the bad key if one is wrong."""
  options = _check_options(what, "courier_client_kwargs", options, CLIENT_OPTIONS)
  try:
    call_timeout(options.get("call_timeout"))
  except (TypeError, ValueError) as e:
    raise type(e)(f"{what}: courier_client_kwargs['call_timeout']: {e}") from None
  return options


def call_timeout(value: float | datetime.timedelta | None) -> float | None:
  """Launchpad's `call_timeout` as seconds; None and 0 mean no limit."""
  if value is None:
    return None
  seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
  if isinstance(seconds, bool) or not isinstance(seconds, int | float):
    raise TypeError(f"give seconds or a datetime.timedelta, not {value!r}")
  if seconds < 0:
    raise ValueError(f"must be >= 0 seconds, got {value!r}")
  return float(seconds) or None


def _check_options(
  what: str, argument: str, options: Mapping[str, Any] | None, known: dict[str, str]
) -> dict[str, Any]:
  if options is None:
    return {}
  if not isinstance(options, Mapping):
    raise TypeError(f"{what}: {argument} must be a dict, got {options!r}.")
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise TypeError(
      f"{what}: {argument} has unknown option(s) {', '.join(map(repr, unknown))}; the options "
      f"are: {', '.join(sorted(known))}."
    )
  return dict(options)


class _Limited:
  """Serves another object's public methods, at most `size` running at a time."""

  def __init__(self, methods: dict[str, Callable[..., Any]], size: int):
    slots = threading.BoundedSemaphore(size)
    for name, method in methods.items():
      if name != "__call__":
        setattr(self, name, _bounded(method, slots))
    call = methods.get("__call__")
    self._call = None if call is None else _bounded(call, slots)


class _LimitedCallable(_Limited):
  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._call(*args, **kwargs)


def limited(obj: Any, size: int) -> _Limited:
  """An object serving `obj`'s public methods with at most `size` running at
  once, as a server with a pool of `size` threads would."""
  methods = public_methods(obj)
  return (_LimitedCallable if "__call__" in methods else _Limited)(methods, size)


def _bounded(method: Callable[..., Any], slots: threading.BoundedSemaphore) -> Callable[..., Any]:
  @functools.wraps(method)
  def call(*args: Any, **kwargs: Any) -> Any:
    with slots:
      return method(*args, **kwargs)

  return call


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

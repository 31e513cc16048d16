"""The coordinator: one per running program, owned by its launcher.

Nodes register the addresses they bound; handles resolve node names through
it; `lp.stop()` and failure reports reach it from any process; `lp status`
reads it. Every launcher (threads, processes, SSH, Ray) runs this same
service, so no port is ever chosen by one process for another to bind.

The default policy lives here too: a node that fails stops the program, and
the program is over once every node has ended. A launcher that restarts
failed nodes passes `on_failure` and decides instead.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from launchpad.control import auth, control_pb2
from launchpad.control import metrics as metrics_lib
from launchpad.tls import TlsConfig

log = logging.getLogger(__name__)

SERVICE = "launchpad.control.Coordinator"
# Long polls return at least this often, so a vanished caller frees its thread.
MAX_POLL_SECONDS = 30.0
# Long polls (WaitStop, Resolve) hold a server thread each while they wait: at
# most this many wait at once, more are answered RESOURCE_EXHAUSTED (clients
# try again). Threads for the calls that answer at once come on top.
MAX_LONG_POLLS = 1024
SHORT_CALL_THREADS = 32

PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"


@dataclasses.dataclass
class NodeRecord:
  """What the coordinator knows of one node."""

  name: str
  state: str = PENDING
  pid: int = 0
  host: str = ""
  addresses: tuple[str, ...] = ()
  previous_addresses: tuple[str, ...] = ()  # before its last restart
  host_id: str = ""
  restarts: int = 0
  description: str = ""
  traceback: str = ""
  exception: control_pb2.ExceptionInfo | None = None  # what the node raised, as data
  # The latest stats of the node's process (ReportStats), while it runs.
  usage: control_pb2.ProcessUsage | None = None
  stats: control_pb2.NodeStats | None = None
  stats_time: float = 0.0  # time.monotonic() when they came


class Coordinator:
  """Serves the control plane of the program whose nodes are `node_names`.

  Args:
    program: the program's name.
    node_names: every node that will run (`label[index]`), colocated ones too.
    secret: the program secret; calls must carry a proof made with the
      control token derived from it (auth.py).
    host: the interface to bind.
    tls: serve over TLS with these settings (nodes on other hosts).
    on_failure: called with the record of a failed node; returns True if it
      handled the failure (restarted the node), else the program stops.
    max_long_polls: how many WaitStop and Resolve calls may wait at once.
  """

  def __init__(
    self,
    program: str,
    node_names: list[str],
    secret: bytes,
    host: str = "127.0.0.1",
    on_failure: Callable[[NodeRecord], bool] | None = None,
    tls: TlsConfig | None = None,
    max_long_polls: int = MAX_LONG_POLLS,
  ):
    self._tls = tls
    self.program = program
    self.nodes = {name: NodeRecord(name) for name in node_names}
    self._verifier = auth.Verifier(auth.control_token(secret))
    self._max_long_polls = max_long_polls
    self._poll_slots = threading.BoundedSemaphore(max_long_polls)
    self._host = host
    self._on_failure = on_failure
    self._changed = threading.Condition()
    self._stop_reason: str | None = None
    self.stop_signal: int | None = None  # the signal behind the stop, if one was
    self._closed = False
    self._server: grpc.Server | None = None
    self.address: str | None = None
    # What nodes reported with lp.report, and who else wants each report.
    self.metrics = metrics_lib.MetricsLog(self._changed)
    self._metrics_listeners: list[Callable[[metrics_lib.Metrics], None]] = []

  # The launcher's side.

  def start(self) -> str:
    """Starts serving; returns the address that nodes must be given."""
    self._executor = _Executor("coordinator", self._max_long_polls + SHORT_CALL_THREADS)
    server = grpc.server(
      self._executor,
      interceptors=(_ProofCheck(self._verifier),),
      options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((self._handlers(),))
    address = f"{self._host}:0"
    if self._tls is None:
      port = server.add_insecure_port(address)
    else:
      port = server.add_secure_port(address, self._tls.grpc_server_credentials())
    server.start()
    self._server = server
    self.address = f"{self._host}:{port}"
    return self.address

  def close(self) -> None:
    """Stops serving; waiting callers are answered first."""
    with self._changed:
      self._closed = True
      self._changed.notify_all()
    self.metrics.close()
    if self._server is not None:
      self._server.stop(grace=1.0).wait(5.0)
      self._executor.shutdown()

  @property
  def closed(self) -> bool:
    """True once `close()` was called."""
    return self._closed

  @property
  def stop_reason(self) -> str | None:
    """Why the program is stopping, or None while it runs."""
    return self._stop_reason

  def set_failure_policy(self, on_failure: Callable[[NodeRecord], bool]) -> None:
    """Replaces the default policy: `on_failure` returns True if it handled a failure."""
    self._on_failure = on_failure

  def request_stop(self, reason: str, signum: int | None = None) -> None:
    """Asks every node to stop; the first reason given is kept, with the
    signal that brought it (`signum`: Ctrl-C, SIGTERM, a Slurm notice), if one did."""
    with self._changed:
      if self._stop_reason is None:
        self._stop_reason = reason
        self.stop_signal = signum
        log.info("program %s stopping: %s", self.program, reason)
      self._changed.notify_all()

  def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
    """Blocks until `predicate()` holds (checked on every change); False on timeout."""
    with self._changed:
      return self._changed.wait_for(lambda: predicate() or self._closed, timeout) and predicate()

  def all_ended(self) -> bool:
    return all(r.state in (FINISHED, FAILED) for r in self.nodes.values())

  def failures(self) -> list[NodeRecord]:
    with self._changed:
      return [r for r in self.nodes.values() if r.state == FAILED]

  def add_metrics_listener(self, listener: Callable[[metrics_lib.Metrics], None]) -> None:
    """Calls `listener(metrics)` with every report from now on, in the
    thread that received it; what it raises is logged."""
    self._metrics_listeners.append(listener)

  def node_restarted(self, name: str) -> None:
    """Marks a node that its launcher started again after a failure."""
    with self._changed:
      record = self.nodes[name]
      record.restarts += 1
      record.state = PENDING
      record.previous_addresses = record.addresses or record.previous_addresses
      record.addresses = ()
      self._changed.notify_all()

  # The nodes' side, also callable in process.

  def register(self, name: str, addresses: list[str], host_id: str) -> None:
    with self._changed:
      record = self._record(name)
      record.addresses = tuple(addresses)
      record.host_id = host_id
      self._changed.notify_all()

  def report(self, event: control_pb2.NodeEvent, run: int | None = None) -> None:
    """Records how a node is doing. A failed node's record changes only when
    its launcher restarts it (`node_restarted`): later reports of the run that
    failed are retries of the failure's report, or come too late.

    `run` is the node's `restarts` when the process the event is about
    started; a launcher reporting a process's exit gives it, so that the exit
    of a run the node has since been restarted from is dropped, not taken
    for a failure of the new run."""
    with self._changed:
      record = self._record(event.node)
      if record.state == FAILED or (run is not None and run != record.restarts):
        return
      record.pid, record.host = event.pid, event.host
      if event.kind == control_pb2.NodeEvent.STARTED:
        record.state = RUNNING
        record.usage = record.stats = None  # a new process: the old one's stats are void
      elif event.kind == control_pb2.NodeEvent.FINISHED:
        record.state = FINISHED
      else:
        record.state = FAILED
        record.description = event.description
        record.traceback = event.traceback
        record.exception = event.exception if event.HasField("exception") else None
      self._changed.notify_all()
    if event.kind == control_pb2.NodeEvent.FAILED:
      log.error("node %s failed: %s\n%s", event.node, event.description, event.traceback)
      if not (self._on_failure and self._on_failure(record)):
        self.request_stop(f"node {event.node} failed: {event.description}")
    elif self.all_ended():
      self.request_stop("every node has ended")

  def resolve(
    self, name: str, timeout: float, cancelled: Callable[[], bool] = lambda: False
  ) -> control_pb2.ResolveReply:
    """Node `name`'s endpoint, waiting up to `timeout` (at most
    MAX_POLL_SECONDS) for it to register, for the stop, or for `cancelled()`
    (checked at every change and on `wake()`)."""
    record = self._record(name)
    with self._changed:
      self._changed.wait_for(
        lambda: record.addresses or self._stop_reason is not None or self._closed or cancelled(),
        min(max(timeout, 0.0), MAX_POLL_SECONDS),
      )
      endpoint = control_pb2.Endpoint(node=name, addresses=record.addresses, host_id=record.host_id)
      return control_pb2.ResolveReply(
        found=bool(record.addresses),
        stopping=self._stop_reason is not None,
        endpoint=endpoint,
        previous_addresses=record.previous_addresses,
      )

  def wait_stop(
    self, timeout: float, cancelled: Callable[[], bool] = lambda: False
  ) -> control_pb2.StopState:
    """Whether the program is stopping, once it is or after `timeout` (at
    most MAX_POLL_SECONDS), or once `cancelled()`."""
    with self._changed:
      self._changed.wait_for(
        lambda: self._stop_reason is not None or self._closed or cancelled(),
        min(max(timeout, 0.0), MAX_POLL_SECONDS),
      )
      stopping = self._stop_reason is not None or self._closed
      return control_pb2.StopState(stopping=stopping, reason=self._stop_reason or "")

  def wake(self) -> None:
    """Wakes every waiting call to check its `cancelled()`."""
    with self._changed:
      self._changed.notify_all()

  def report_stats(self, stats: control_pb2.ProcessStats) -> None:
    """Keeps what a process reported: its usage for every running node it runs
    (same pid and host), and each node's own counters."""
    counters = {node.node: node for node in stats.nodes}
    now = time.monotonic()
    with self._changed:  # no notify: nobody waits for stats
      for record in self.nodes.values():
        if record.state == RUNNING and (record.pid, record.host) == (stats.pid, stats.host):
          record.usage, record.stats = stats.usage, counters.get(record.name)
          record.stats_time = now

  def report_metrics(self, report: control_pb2.MetricsReport) -> None:
    """Keeps a node's lp.report: in `metrics`, and for its listeners. A report
    that names no node goes to the one running node with its pid and host, if
    there is exactly one (else it is kept under '')."""
    with self._changed:
      node = report.node
      if node:
        self._record(node)
      else:
        senders = [
          r.name
          for r in self.nodes.values()
          if r.state == RUNNING and (r.pid, r.host) == (report.pid, report.host)
        ]
        node = senders[0] if len(senders) == 1 else ""
    metrics = self.metrics.add(
      metrics_lib.Metrics(node, report.step, dict(report.values), report.time)
    )
    for listener in list(self._metrics_listeners):
      try:
        listener(metrics)
      except Exception:
        log.exception("program %s: a listener of metrics failed", self.program)

  def _latest_metrics(self, name: str) -> dict[str, Any]:
    """The NodeStatus field of the latest metrics node `name` reported, if any."""
    latest = self.metrics.latest(name)
    if latest is None:
      return {}
    report = control_pb2.MetricsReport(
      node=latest.node, step=latest.step, values=latest.values, time=latest.time
    )
    return {"metrics": report}

  def _stats_of(self, record: NodeRecord, now: float) -> dict[str, Any]:
    """The NodeStatus fields of `record`'s latest stats (none unless it runs)."""
    if record.state != RUNNING or record.usage is None:
      return {}
    fields = {"usage": record.usage, "stats_age": now - record.stats_time}
    if record.stats is not None:
      fields["stats"] = record.stats
    return fields

  def status(self) -> control_pb2.StatusReply:
    now = time.monotonic()
    with self._changed:
      nodes = [
        control_pb2.NodeStatus(
          node=r.name,
          state=r.state,
          pid=r.pid,
          host=r.host,
          addresses=r.addresses,
          restarts=r.restarts,
          description=r.description,
          **self._stats_of(r, now),
          **self._latest_metrics(r.name),
        )
        for r in self.nodes.values()
      ]
    return control_pb2.StatusReply(
      program=self.program,
      stopping=self._stop_reason is not None,
      reason=self._stop_reason or "",
      nodes=nodes,
    )

  def _record(self, name: str) -> NodeRecord:
    try:
      return self.nodes[name]
    except KeyError:
      raise KeyError(
        f"program {self.program} has no node {name!r}; its nodes are {sorted(self.nodes)}."
      ) from None

  # gRPC plumbing.

  def _handlers(self) -> grpc.GenericRpcHandler:
    pb = control_pb2

    def method(fn, request_type, waits=lambda request: False):
      def handler(request, context):
        waiting = waits(request)
        if waiting and not self._poll_slots.acquire(blocking=False):
          context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the coordinator has {self._max_long_polls} waiting calls already; try again",
          )
        try:
          return fn(request)
        except KeyError as e:
          context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        finally:
          if waiting:
            self._poll_slots.release()

      return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_type.FromString,
        response_serializer=lambda m: m.SerializeToString(),
      )

    return grpc.method_handlers_generic_handler(
      SERVICE,
      {
        "Register": method(
          lambda r: (
            self.register(r.endpoint.node, list(r.endpoint.addresses), r.endpoint.host_id)
            or pb.Empty()
          ),
          pb.RegisterRequest,
        ),
        "Resolve": method(
          lambda r: self.resolve(r.node, r.timeout), pb.ResolveRequest, lambda r: r.timeout > 0
        ),
        "Report": method(lambda r: self.report(r) or pb.Empty(), pb.NodeEvent),
        "Stop": method(lambda r: self.request_stop(r.reason) or pb.Empty(), pb.StopRequest),
        "WaitStop": method(
          lambda r: self.wait_stop(r.timeout), pb.WaitStopRequest, lambda r: r.timeout > 0
        ),
        "Status": method(lambda r: self.status(), pb.Empty),
        "ReportStats": method(lambda r: self.report_stats(r) or pb.Empty(), pb.ProcessStats),
        "ReportMetrics": method(lambda r: self.report_metrics(r) or pb.Empty(), pb.MetricsReport),
      },
    )


class _ProofCheck(grpc.ServerInterceptor):
  """Checks every call's proof in the server's own thread, before any handler.

  A call whose proof fails is refused before its body is read: the thread
  that answers it does not wait for the body, and nothing of it is parsed.
  An accepted call's body must be the one its proof commits to; it is
  compared before it is parsed.
  """

  def __init__(self, verifier: auth.Verifier):
    self._verifier = verifier

  def intercept_service(self, continuation, handler_call_details):
    try:
      digest = self._verifier.check(
        handler_call_details.method, handler_call_details.invocation_metadata
      )
    except auth.ProofError as e:
      return _refusal(str(e))
    handler = continuation(handler_call_details)
    if handler is None or handler.unary_unary is None:
      return handler
    return _body_checked(handler, digest)


def _refusal(reason: str) -> grpc.RpcMethodHandler:
  def refuse(requests, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

  # A request-streaming handler is called before any of the request is read.
  return grpc.stream_unary_rpc_method_handler(refuse)


_ALTERED = object()  # the parsed request of a call whose body does not match its proof


def _body_checked(handler: grpc.RpcMethodHandler, digest: str) -> grpc.RpcMethodHandler:
  parse, behaviour = handler.request_deserializer, handler.unary_unary

  def deserialize(body: bytes):
    return parse(body) if hmac.compare_digest(auth.body_digest(body), digest) else _ALTERED

  def run(request, context):
    if request is _ALTERED:
      context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "the call's body is not the one its proof was made for",
      )
    return behaviour(request, context)

  return grpc.unary_unary_rpc_method_handler(
    run, request_deserializer=deserialize, response_serializer=handler.response_serializer
  )


class _Executor:
  """A pool of daemon threads for the gRPC server, growing up to `max_threads`.

  Not a ThreadPoolExecutor: those refuse work once the interpreter begins to
  exit, and the coordinator must keep serving until the program is over even
  when the launching script's main() has returned. Long polls hold a thread
  each, so the pool grows with the number of waiting callers, which
  MAX_LONG_POLLS bounds.
  """

  def __init__(self, name: str, max_threads: int):
    self._name = name
    self._max_threads = max_threads
    self._threads = 0
    self._work: queue.SimpleQueue = queue.SimpleQueue()  # None: a thread's end
    self._idle = 0
    self._closed = False
    self._lock = threading.Lock()

  def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> futures.Future:
    future: futures.Future = futures.Future()
    with self._lock:
      if self._closed:
        raise RuntimeError(f"{self._name}: the server has stopped; it takes no more calls")
    self._work.put((future, fn, args, kwargs))
    with self._lock:
      if self._idle:
        self._idle -= 1
        return future
      if self._threads == self._max_threads:
        return future  # it waits for a thread to finish its call
      self._threads += 1
    threading.Thread(target=self._run, name=self._name, daemon=True).start()
    return future

  def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
    """Ends every thread once the server has stopped: an idle one at once, a
    busy one when its call returns (without waiting for it). A process that
    runs many programs one after another keeps none of their threads."""
    with self._lock:
      self._closed = True
      threads = self._threads
    for _ in range(threads):
      self._work.put(None)

  def _run(self) -> None:
    while (work := self._work.get()) is not None:
      future, fn, args, kwargs = work
      if future.set_running_or_notify_cancel():
        try:
          future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to whoever holds the future
          future.set_exception(e)
      with self._lock:
        self._idle += 1

"""The nodes' side of the control plane: a small gRPC client of the coordinator.

`Control` is what a process's runtime calls; `ControlClient` is its gRPC
transport, for nodes in processes other than the coordinator's. Nodes in the
coordinator's own process (the threads launcher, and the launching process
of every launcher) call it directly through `local.LocalControl`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from launchpad import errors
from launchpad.control import auth, control_pb2
from launchpad.control.coordinator import MAX_POLL_SECONDS, SERVICE
from launchpad.host_identity import host_id
from launchpad.tls import TlsConfig

# Each control call is small and the coordinator answers at once, except the
# long polls, which get their own deadline.
CALL_SECONDS = 30.0
# Failures that may pass are retried, after pauses that double from the first
# to the longest. A coordinator too busy to take the call (gRPC sheds calls
# it cannot queue: CANCELLED; too many long polls: RESOURCE_EXHAUSTED) is
# retried until the call's deadline; one that no connection reaches
# (UNAVAILABLE) for UNREACHABLE_SECONDS has ended with its launcher.
BUSY = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED})
UNREACHABLE_SECONDS = 10.0
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 1.0


class Control(Protocol):
  """The coordinator's calls as a process's runtime makes them. Once closed,
  every call raises ProgramStoppedError."""

  address: str

  def close(self) -> None: ...
  def register(self, node: str, addresses: list[str]) -> None: ...
  def report(self, event: control_pb2.NodeEvent) -> None: ...
  def stop(self, reason: str) -> None: ...
  def status(self) -> control_pb2.StatusReply: ...
  def report_stats(self, stats: control_pb2.ProcessStats) -> None: ...
  def report_metrics(self, report: control_pb2.MetricsReport) -> None: ...
  def wait_stop(self, timeout: float) -> control_pb2.StopState: ...
  def resolve(self, node: str, timeout: float | None) -> control_pb2.Endpoint: ...
  def previous_addresses(self, node: str) -> list[str]: ...


def resolve_endpoint(
  node: str,
  timeout: float | None,
  poll: Callable[[float, float | None], control_pb2.ResolveReply],
) -> control_pb2.Endpoint:
  """The endpoint of `node`, waiting up to `timeout` (None: no limit) for it
  to register, through `poll(seconds, deadline)`, a coordinator's Resolve
  that waits up to `seconds`. Raises TimeoutError, or ProgramStoppedError
  once the program stops."""
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    seconds = MAX_POLL_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
    reply = poll(seconds, deadline)
    if reply.found:
      return reply.endpoint
    if reply.stopping:
      raise errors.ProgramStoppedError(f"the program stopped before node {node} started serving.")
    if deadline is not None and time.monotonic() >= deadline:
      raise TimeoutError(f"node {node} did not register within {timeout} s")


def closed_error(address: str) -> errors.ProgramStoppedError:
  """What a call on a closed control raises."""
  return errors.ProgramStoppedError(
    f"this process's client of the coordinator at {address} is closed: the program has ended here."
  )


class ControlClient:
  """Calls the coordinator at `address`, each call with a proof of the
  program's control token (auth.py).

  A call that fails in a way that may pass (the coordinator was busy, or the
  connection broke: CANCELLED, RESOURCE_EXHAUSTED, UNAVAILABLE) is tried again
  (see BUSY); only then does the program count as ended.
  """

  def __init__(
    self,
    address: str,
    secret: bytes | None = None,
    token: str | None = None,
    tls: TlsConfig | None = None,
  ):
    """Give the program `secret`, or the control `token` derived from it, and
    its TLS settings if it uses TLS."""
    self.address = address
    options = [("grpc.enable_http_proxy", 0)]
    if tls is None:
      self._channel = grpc.insecure_channel(address, options=options)
    else:
      options.append(("grpc.ssl_target_name_override", tls.server_name))
      credentials = tls.grpc_channel_credentials()
      self._channel = grpc.secure_channel(address, credentials, options=options)
    self._prover = auth.Prover(token if token is not None else auth.control_token(secret))
    self._closed = threading.Event()

  def close(self) -> None:
    """Ends the client; calls in flight and later ones raise ProgramStoppedError."""
    self._closed.set()
    self._channel.close()

  def register(self, node: str, addresses: list[str]) -> None:
    endpoint = control_pb2.Endpoint(node=node, addresses=addresses, host_id=host_id())
    self._call("Register", control_pb2.RegisterRequest(endpoint=endpoint), control_pb2.Empty)

  def report(self, event: control_pb2.NodeEvent) -> None:
    event.pid = os.getpid()
    event.host = socket.gethostname()
    self._call("Report", event, control_pb2.Empty)

  def stop(self, reason: str) -> None:
    self._call("Stop", control_pb2.StopRequest(reason=reason), control_pb2.Empty)

  def status(self) -> control_pb2.StatusReply:
    return self._call("Status", control_pb2.Empty(), control_pb2.StatusReply)

  def report_stats(self, stats: control_pb2.ProcessStats) -> None:
    """Sends what this process measured of itself and its nodes (stats.Reporter)."""
    self._call("ReportStats", stats, control_pb2.Empty)

  def report_metrics(self, report: control_pb2.MetricsReport) -> None:
    """Sends a node's metrics (lp.report), with this process's pid and host."""
    report.pid = os.getpid()
    report.host = socket.gethostname()
    self._call("ReportMetrics", report, control_pb2.Empty)

  def wait_stop(self, timeout: float) -> control_pb2.StopState:
    """Returns when the program is stopping, or after `timeout` (at most 30 s)."""
    request = control_pb2.WaitStopRequest(timeout=timeout)
    return self._call("WaitStop", request, control_pb2.StopState, min(timeout, MAX_POLL_SECONDS))

  def resolve(self, node: str, timeout: float | None) -> control_pb2.Endpoint:
    """The endpoint of `node`, waiting up to `timeout` (None: no limit) for it
    to register. Raises TimeoutError, or ProgramStoppedError once the program
    stops."""

    def poll(seconds: float, deadline: float | None) -> control_pb2.ResolveReply:
      request = control_pb2.ResolveRequest(node=node, timeout=seconds)
      return self._call("Resolve", request, control_pb2.ResolveReply, seconds, retry_until=deadline)

    return resolve_endpoint(node, timeout, poll)

  def previous_addresses(self, node: str) -> list[str]:
    """The addresses `node` had before it was restarted (empty at first start)."""
    request = control_pb2.ResolveRequest(node=node, timeout=0.0)
    return list(self._call("Resolve", request, control_pb2.ResolveReply).previous_addresses)

  def _call(
    self,
    method: str,
    request,
    reply_type,
    wait: float = 0.0,
    retry_until: float | None = None,
  ):
    """Calls `method`; `wait` is how long the coordinator may hold the call (a
    long poll). Failures that may pass are retried (see BUSY) until the call's
    deadline, or `retry_until` (time.monotonic()) if that comes first."""
    name = f"/{SERVICE}/{method}"
    rpc = self._channel.unary_unary(
      name, request_serializer=_as_is, response_deserializer=reply_type.FromString
    )
    body = request.SerializeToString()
    deadline = time.monotonic() + CALL_SECONDS + wait
    retry_until = deadline if retry_until is None else min(retry_until, deadline)
    pause = RETRY_FIRST_SECONDS
    unreachable_since = None
    while True:
      try:
        if self._closed.is_set():
          raise closed_error(self.address)
        timeout = max(deadline - time.monotonic(), 0.0)
        return rpc(body, timeout=timeout, metadata=self._prover.metadata(name, body))
      except ValueError:  # "Cannot invoke RPC on closed channel!": close() came after the check
        if self._closed.is_set():
          raise closed_error(self.address) from None
        raise
      except grpc.RpcError as e:
        now = time.monotonic()
        if e.code() == grpc.StatusCode.UNAVAILABLE:
          unreachable_since = now if unreachable_since is None else unreachable_since
          left = min(retry_until, unreachable_since + UNREACHABLE_SECONDS) - now
        else:
          left = retry_until - now if e.code() in BUSY else 0.0
        if left > 0 and not self._closed.is_set():
          self._closed.wait(min(pause, left))
          pause = min(2 * pause, RETRY_MAX_SECONDS)
          continue
        raise self._failure(method, e) from None

  def _failure(self, method: str, error: grpc.RpcError) -> Exception:
    """What a failed call raises: KeyError for an unknown node, AuthenticationError
    for a refused proof, else ProgramStoppedError."""
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND:
      return KeyError(error.details())
    if code == grpc.StatusCode.UNAUTHENTICATED:
      return errors.AuthenticationError(
        f"the coordinator at {self.address} refused this process's {method} call: "
        f"{error.details()}."
      )
    return errors.ProgramStoppedError(
      f"the program's coordinator at {self.address} cannot be reached "
      f"({code.name}: {error.details()}); the program has ended or its launcher died."
    )


def _as_is(body: bytes) -> bytes:
  return body

"""The nodes' side of the control plane: a small client of the coordinator."""

from __future__ import annotations

import os
import socket
import time

import grpc

from launchpad import errors
from launchpad.control import auth, control_pb2
from launchpad.control.coordinator import MAX_POLL_SECONDS, SERVICE
from launchpad.tls import TlsConfig

# Each control call is small and the coordinator answers at once, except the
# long polls, which get their own deadline.
CALL_SECONDS = 30.0


def host_id() -> str:
  """Identifies this host and network namespace: equal ids reach each other's
  abstract Unix sockets. Nodes that a remote launcher gave an address of their
  own ($LAUNCHPAD_HOST) count as a host of their own, as they would be on a
  separate machine."""
  try:
    netns = os.stat("/proc/self/ns/net").st_ino
  except OSError:
    netns = 0
  return f"{socket.gethostname()}/{netns}/{os.environ.get('LAUNCHPAD_HOST', '')}"


class ControlClient:
  """Calls the coordinator at `address` with the program's token."""

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
    token = token if token is not None else auth.control_token(secret)
    self._metadata = ((auth.METADATA_KEY, token),)

  def close(self) -> None:
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

  def wait_stop(self, timeout: float) -> control_pb2.StopState:
    """Returns when the program is stopping, or after `timeout` (at most 30 s)."""
    request = control_pb2.WaitStopRequest(timeout=timeout)
    return self._call("WaitStop", request, control_pb2.StopState, min(timeout, MAX_POLL_SECONDS))

  def resolve(self, node: str, timeout: float | None) -> control_pb2.Endpoint:
    """The endpoint of `node`, waiting up to `timeout` (None: no limit) for it
    to register. Raises TimeoutError, or ProgramStoppedError once the program
    stops."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
      poll = MAX_POLL_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
      reply = self._call(
        "Resolve",
        control_pb2.ResolveRequest(node=node, timeout=poll),
        control_pb2.ResolveReply,
        poll,
      )
      if reply.found:
        return reply.endpoint
      if reply.stopping:
        raise errors.ProgramStoppedError(f"the program stopped before node {node} started serving.")
      if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"node {node} did not register within {timeout} s")

  def previous_addresses(self, node: str) -> list[str]:
    """The addresses `node` had before it was restarted (empty at first start)."""
    request = control_pb2.ResolveRequest(node=node, timeout=0.0)
    return list(self._call("Resolve", request, control_pb2.ResolveReply).previous_addresses)

  def _call(self, method: str, request, reply_type, wait: float = 0.0):
    rpc = self._channel.unary_unary(
      f"/{SERVICE}/{method}",
      request_serializer=lambda m: m.SerializeToString(),
      response_deserializer=reply_type.FromString,
    )
    try:
      return rpc(request, timeout=CALL_SECONDS + wait, metadata=self._metadata)
    except grpc.RpcError as e:
      code = e.code()
      if code == grpc.StatusCode.NOT_FOUND:
        raise KeyError(e.details()) from None
      if code == grpc.StatusCode.UNAUTHENTICATED:
        raise errors.AuthenticationError(
          f"the coordinator at {self.address} refused this process's token: it "
          "belongs to another launch of the program."
        ) from None
      raise errors.ProgramStoppedError(
        f"the program's coordinator at {self.address} cannot be reached "
        f"({code.name}: {e.details()}); the program has ended or its launcher died."
      ) from None

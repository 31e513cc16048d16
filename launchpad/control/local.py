"""The control plane for nodes in the coordinator's own process.

The threads launcher runs every node in the launching process, and every
launcher has a runtime there (lp.stop() from the launching script). Their
calls need no RPC: `LocalControl` makes the calls of `client.Control` on the
coordinator object itself. Nothing travels, nothing is serialised, and no
gRPC channel of this process to its own server can hold a node's end report
or the launch's clean-up.
"""

from __future__ import annotations

import os
import socket
import threading

from launchpad import errors
from launchpad.control import client, control_pb2
from launchpad.control.coordinator import MAX_POLL_SECONDS, Coordinator
from launchpad.host_identity import host_id


class LocalControl:
  """`client.Control` for a coordinator of this process. Once closed, every
  call raises ProgramStoppedError, as a closed ControlClient's do."""

  def __init__(self, coordinator: Coordinator):
    self._coordinator = coordinator
    self.address = coordinator.address or "(not serving)"
    self._closed = threading.Event()

  def close(self) -> None:
    """Ends this control; calls waiting in the coordinator return and raise."""
    self._closed.set()
    self._coordinator.wake()

  def register(self, node: str, addresses: list[str]) -> None:
    self._open().register(node, addresses, host_id())

  def report(self, event: control_pb2.NodeEvent) -> None:
    event.pid = os.getpid()
    event.host = socket.gethostname()
    self._open().report(event)

  def stop(self, reason: str) -> None:
    self._open().request_stop(reason)

  def status(self) -> control_pb2.StatusReply:
    return self._open().status()

  def report_stats(self, stats: control_pb2.ProcessStats) -> None:
    self._open().report_stats(stats)

  def report_metrics(self, report: control_pb2.MetricsReport) -> None:
    report.pid = os.getpid()
    report.host = socket.gethostname()
    self._open().report_metrics(report)

  def wait_stop(self, timeout: float) -> control_pb2.StopState:
    """Returns when the program is stopping, or after `timeout` (at most 30 s)."""
    state = self._open().wait_stop(min(timeout, MAX_POLL_SECONDS), self._closed.is_set)
    self._open()  # closed meanwhile: raises
    return state

  def resolve(self, node: str, timeout: float | None) -> control_pb2.Endpoint:
    """The endpoint of `node`, waiting up to `timeout` (None: no limit) for it
    to register. Raises TimeoutError, or ProgramStoppedError once the program
    stops."""

    def poll(seconds: float, _: float | None) -> control_pb2.ResolveReply:
      reply = self._open().resolve(node, seconds, self._closed.is_set)
      self._open()  # closed meanwhile: raises
      return reply

    return client.resolve_endpoint(node, timeout, poll)

  def previous_addresses(self, node: str) -> list[str]:
    return list(self._open().resolve(node, 0.0).previous_addresses)

  def _open(self) -> Coordinator:
    """The coordinator, or ProgramStoppedError if this control or it closed."""
    if self._closed.is_set():
      raise client.closed_error(self.address)
    if self._coordinator.closed:
      raise errors.ProgramStoppedError(
        f"the program's coordinator at {self.address} has closed: the program has ended."
      )
    return self._coordinator

"""Tests of the coordinator through both of its transports: over real gRPC
(launchpad.control.client.ControlClient, what node processes use) and called
in its own process (launchpad.control.local.LocalControl, what the threads
launcher's nodes and every launching process use)."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent import futures

import pytest

from launchpad import errors
from launchpad.control import control_pb2
from launchpad.control.client import ControlClient
from launchpad.control.coordinator import Coordinator
from launchpad.control.local import LocalControl
from launchpad.host_identity import host_id

TIMEOUT = 10.0
NODES = ["learner[0]", "actor[0]", "actor[1]"]
Event = control_pb2.NodeEvent


class Running:
  """A coordinator serving on loopback, and clients of it."""

  def __init__(self, on_failure=None, transport: str = "grpc"):
    self.transport = transport
    self.secret = os.urandom(32)
    self.coordinator = Coordinator("prog", list(NODES), self.secret, on_failure=on_failure)
    self.address = self.coordinator.start()
    self.clients = []
    self.pool = futures.ThreadPoolExecutor(4)

  def client(self, secret=None):
    if self.transport == "local":
      client = LocalControl(self.coordinator)
    else:
      client = ControlClient(self.address, self.secret if secret is None else secret)
    self.clients.append(client)
    return client

  def close(self):
    self.coordinator.request_stop("test teardown")
    self.pool.shutdown(wait=True, cancel_futures=True)
    for client in self.clients:
      client.close()
    self.coordinator.close()


TRANSPORTS = ["grpc", "local"]


@pytest.fixture(params=TRANSPORTS)
def running(request):
  instance = Running(transport=request.param)
  yield instance
  instance.close()


@pytest.fixture
def grpc_running():
  """A coordinator served over gRPC only, for what only gRPC has (a port, proofs)."""
  instance = Running()
  yield instance
  instance.close()


@pytest.fixture(params=TRANSPORTS)
def make_running(request):
  instances = []

  def _make(**kwargs):
    instances.append(Running(transport=request.param, **kwargs))
    return instances[-1]

  yield _make
  for instance in instances:
    instance.close()


def states(status):
  return {n.node: n.state for n in status.nodes}


def test_coordinator_serves_on_loopback(grpc_running):
  host, port = grpc_running.address.rsplit(":", 1)
  assert host == "127.0.0.1"
  assert int(port) > 0


def test_register_then_resolve(running):
  client = running.client()
  client.register("learner[0]", ["127.0.0.1:5555", "unix:@learner"])
  endpoint = running.client().resolve("learner[0]", timeout=TIMEOUT)
  assert endpoint.node == "learner[0]"
  assert list(endpoint.addresses) == ["127.0.0.1:5555", "unix:@learner"]
  assert endpoint.host_id == host_id()


def test_resolve_waits_until_the_node_registers(running):
  waiting = running.pool.submit(running.client().resolve, "actor[1]", TIMEOUT)
  with pytest.raises(futures.TimeoutError):
    waiting.result(timeout=0.2)  # still waiting: nothing registered yet
  running.client().register("actor[1]", ["127.0.0.1:6000"])
  endpoint = waiting.result(timeout=TIMEOUT)
  assert list(endpoint.addresses) == ["127.0.0.1:6000"]


def coordinator_threads() -> set[threading.Thread]:
  return {t for t in threading.enumerate() if t.name == "coordinator" and t.is_alive()}


def test_a_closed_coordinator_ends_its_threads_the_waiting_ones_included():
  earlier = coordinator_threads()  # other tests' coordinators: some may still be ending
  instance = Running()
  waiting = instance.pool.submit(instance.client().resolve, "actor[1]", TIMEOUT)
  with pytest.raises(futures.TimeoutError):
    waiting.result(timeout=0.2)  # a long poll holds a thread
  instance.client().register("learner[0]", ["127.0.0.1:5555"])
  assert coordinator_threads() - earlier
  instance.close()
  deadline = time.monotonic() + TIMEOUT
  while left := coordinator_threads() - earlier:
    assert time.monotonic() < deadline, f"{len(left)} threads of the closed coordinator left"
    threading.Event().wait(0.01)
  with pytest.raises(errors.ProgramStoppedError):
    waiting.result(timeout=TIMEOUT)


def test_resolve_times_out(running):
  client = running.client()
  start = time.monotonic()
  with pytest.raises(TimeoutError, match=r"actor\[0\]"):
    client.resolve("actor[0]", timeout=0.2)
  elapsed = time.monotonic() - start
  assert 0.15 <= elapsed < TIMEOUT


def test_resolve_raises_program_stopped_when_the_program_stops(running):
  client = running.client()
  waiting = running.pool.submit(client.resolve, "actor[0]", TIMEOUT)
  with pytest.raises(futures.TimeoutError):
    waiting.result(timeout=0.2)
  running.client().stop("stopped by the test")
  with pytest.raises(errors.ProgramStoppedError, match=r"actor\[0\]"):
    waiting.result(timeout=TIMEOUT)
  # Once stopping, a resolve of an unregistered node fails at once.
  start = time.monotonic()
  with pytest.raises(errors.ProgramStoppedError):
    client.resolve("actor[1]", timeout=TIMEOUT)
  assert time.monotonic() - start < TIMEOUT / 2


def test_registered_node_still_resolves_while_stopping(running):
  client = running.client()
  client.register("learner[0]", ["127.0.0.1:7000"])
  client.stop("stopping")
  assert list(client.resolve("learner[0]", timeout=TIMEOUT).addresses) == ["127.0.0.1:7000"]


def test_wait_stop_times_out_then_reports_the_stop(running):
  client = running.client()
  state = client.wait_stop(timeout=0.1)
  assert state.stopping is False
  waiting = running.pool.submit(client.wait_stop, TIMEOUT)
  running.client().stop("because the test says so")
  state = waiting.result(timeout=TIMEOUT)
  assert state.stopping is True
  assert state.reason == "because the test says so"
  assert running.coordinator.stop_reason == "because the test says so"


def test_first_stop_reason_is_kept(running):
  client = running.client()
  client.stop("first reason")
  client.stop("second reason")
  assert client.status().reason == "first reason"


def test_reported_failure_stops_the_program_by_default(running):
  client = running.client()
  client.report(Event(node="actor[1]", kind=Event.STARTED))
  client.report(
    Event(
      node="actor[1]",
      kind=Event.FAILED,
      description="ValueError: bad action",
      traceback="Traceback (most recent call last):\n  ...\nValueError: bad action\n",
    )
  )
  state = client.wait_stop(timeout=TIMEOUT)
  assert state.stopping
  assert "actor[1]" in state.reason
  assert "ValueError: bad action" in state.reason
  (failure,) = running.coordinator.failures()
  assert failure.name == "actor[1]"
  assert "Traceback" in failure.traceback
  status = client.status()
  assert states(status)["actor[1]"] == "failed"
  assert {n.node: n.description for n in status.nodes}["actor[1]"] == "ValueError: bad action"


def test_on_failure_returning_true_prevents_the_stop(make_running):
  handled = []

  def on_failure(record):
    handled.append((record.name, record.description))
    return True

  running = make_running(on_failure=on_failure)
  client = running.client()
  client.report(Event(node="actor[0]", kind=Event.FAILED, description="RuntimeError: x"))
  assert handled == [("actor[0]", "RuntimeError: x")]
  assert client.wait_stop(timeout=0.2).stopping is False
  assert running.coordinator.stop_reason is None
  status = client.status()
  assert status.stopping is False
  assert states(status)["actor[0]"] == "failed"


def test_the_exit_of_a_run_the_node_was_restarted_from_is_dropped(make_running):
  # A launcher learns that the failed run's process exited only after it may
  # have restarted the node: that exit is no failure of the new run.
  failed = []
  running = make_running(on_failure=lambda record: failed.append(record.restarts) or True)
  coordinator = running.coordinator
  running.client().report(Event(node="actor[0]", kind=Event.FAILED, description="ValueError"))
  coordinator.node_restarted("actor[0]")
  exit_event = Event(node="actor[0]", kind=Event.FAILED, description="exited with status 1")
  coordinator.report(exit_event, run=0)
  assert failed == [0]
  assert states(running.client().status())["actor[0]"] == "pending"
  coordinator.report(exit_event, run=1)  # the new run's own exit counts
  assert failed == [0, 1]


def test_on_failure_returning_false_stops(make_running):
  running = make_running(on_failure=lambda record: False)
  client = running.client()
  client.report(Event(node="actor[0]", kind=Event.FAILED, description="RuntimeError: y"))
  assert client.wait_stop(timeout=TIMEOUT).stopping is True


def test_status_lists_nodes_and_their_states(running):
  client = running.client()
  client.report(Event(node="learner[0]", kind=Event.STARTED))
  client.register("learner[0]", ["127.0.0.1:8000"])
  client.report(Event(node="actor[0]", kind=Event.STARTED))
  client.report(Event(node="actor[0]", kind=Event.FINISHED))
  status = client.status()
  assert status.program == "prog"
  assert [n.node for n in status.nodes] == NODES
  assert states(status) == {
    "learner[0]": "running",
    "actor[0]": "finished",
    "actor[1]": "pending",
  }
  learner = status.nodes[0]
  assert learner.pid == os.getpid()
  assert learner.host == socket.gethostname()
  assert list(learner.addresses) == ["127.0.0.1:8000"]
  assert status.stopping is False


def test_program_stops_once_every_node_has_ended(running):
  client = running.client()
  for name in NODES:
    client.report(Event(node=name, kind=Event.STARTED))
  for name in NODES[:-1]:
    client.report(Event(node=name, kind=Event.FINISHED))
  assert client.wait_stop(timeout=0.1).stopping is False
  client.report(Event(node=NODES[-1], kind=Event.FINISHED))
  state = client.wait_stop(timeout=TIMEOUT)
  assert state.stopping
  assert "ended" in state.reason
  assert running.coordinator.all_ended()


def test_wrong_secret_is_refused(grpc_running):
  running = grpc_running
  intruder = running.client(secret=b"not the program's secret")
  for call in (
    intruder.status,
    lambda: intruder.register("learner[0]", ["127.0.0.1:1"]),
    lambda: intruder.report(Event(node="learner[0]", kind=Event.FAILED)),
    lambda: intruder.stop("intruder"),
    lambda: intruder.resolve("learner[0]", 0.1),
  ):
    with pytest.raises(errors.AuthenticationError, match=running.address):
      call()
  # Nothing the intruder sent took effect.
  status = running.client().status()
  assert status.stopping is False
  assert all(n.state == "pending" and not n.addresses for n in status.nodes)


def test_unknown_node_raises_key_error_listing_the_nodes(running):
  client = running.client()
  for call in (
    lambda: client.register("critic[0]", ["127.0.0.1:1"]),
    lambda: client.resolve("critic[0]", 0.1),
    lambda: client.report(Event(node="critic[0]", kind=Event.STARTED)),
  ):
    with pytest.raises(KeyError) as info:
      call()
    message = str(info.value)
    assert "critic[0]" in message
    assert all(name in message for name in NODES)


def test_calls_after_the_coordinator_closed_raise_program_stopped(make_running):
  # Over gRPC a call retries an unreachable coordinator until its deadline
  # (here the resolve's timeout), then counts the program as ended.
  running = make_running()
  client = running.client()
  assert client.status().program == "prog"
  running.coordinator.close()
  start = time.monotonic()
  with pytest.raises(errors.ProgramStoppedError, match="the program has ended"):
    client.resolve("actor[0]", timeout=0.5)
  if running.transport == "grpc":
    assert 0.4 <= time.monotonic() - start < TIMEOUT
  else:  # in process, nothing to retry: every call raises at once
    with pytest.raises(errors.ProgramStoppedError, match="the program has ended"):
      client.report(Event(node="actor[0]", kind=Event.STARTED))


def test_calls_after_the_client_closed_raise_program_stopped(running):
  client = running.client()
  waiting = running.pool.submit(client.wait_stop, TIMEOUT)
  with pytest.raises(futures.TimeoutError):
    waiting.result(timeout=0.2)  # in flight
  client.close()
  with pytest.raises(errors.ProgramStoppedError):
    waiting.result(timeout=TIMEOUT)
  with pytest.raises(errors.ProgramStoppedError, match="closed"):
    client.status()

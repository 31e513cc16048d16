"""Tests of process stats: what a process measures (stats.Reporter) and how the
coordinator's ReportStats RPC hands it to Status, over real gRPC."""

from __future__ import annotations

import os
import socket

import pytest

from launchpad.control import control_pb2
from launchpad.control.client import ControlClient
from launchpad.control.coordinator import Coordinator
from launchpad.courier.client import Client
from launchpad.courier.server import Server
from launchpad.replay import Table
from launchpad.replay import server as replay_server
from launchpad.stats import Reporter

SECRET = b"s" * 32
TIMEOUT = 10.0


@pytest.fixture
def control():
  """A running coordinator of nodes a[0], b[0], c[0], and a client of it."""
  coordinator = Coordinator("stats", ["a[0]", "b[0]", "c[0]"], SECRET)
  client = ControlClient(coordinator.start(), SECRET)
  yield client
  client.close()
  coordinator.close()


def started(control: ControlClient, *names: str) -> None:
  for name in names:
    control.report(control_pb2.NodeEvent(node=name, kind=control_pb2.NodeEvent.STARTED))


def process_stats(pid: int = 0, cpu: float = 12.5, **counters) -> control_pb2.ProcessStats:
  """A report of this process (or of `pid`) with node a[0]'s counters."""
  return control_pb2.ProcessStats(
    pid=pid or os.getpid(),
    host=socket.gethostname(),
    usage=control_pb2.ProcessUsage(cpu_percent=cpu, memory_bytes=2**20),
    nodes=[control_pb2.NodeStats(node="a[0]", **counters)],
  )


def statuses(control: ControlClient) -> dict[str, control_pb2.NodeStatus]:
  return {node.node: node for node in control.status().nodes}


def test_status_gives_each_running_node_its_process_usage_and_its_own_counters(control):
  started(control, "a[0]", "b[0]")  # c[0] never starts
  control.report_stats(process_stats(calls=7, calls_per_second=3.5))
  nodes = statuses(control)
  for name in ("a[0]", "b[0]"):  # both run in this process: both get its usage
    assert nodes[name].HasField("usage")
    assert nodes[name].usage.cpu_percent == 12.5
    assert nodes[name].usage.memory_bytes == 2**20
    assert 0 <= nodes[name].stats_age < TIMEOUT
  assert (nodes["a[0]"].stats.calls, nodes["a[0]"].stats.calls_per_second) == (7, 3.5)
  assert not nodes["b[0]"].HasField("stats")  # it counts nothing of its own
  assert not nodes["c[0]"].HasField("usage")


def test_reports_of_other_processes_and_of_ended_nodes_are_not_shown(control):
  started(control, "a[0]")
  control.report_stats(process_stats(pid=os.getpid() + 1))  # not a[0]'s process
  assert not statuses(control)["a[0]"].HasField("usage")
  control.report_stats(process_stats(calls=1))
  assert statuses(control)["a[0]"].stats.calls == 1
  control.report(control_pb2.NodeEvent(node="a[0]", kind=control_pb2.NodeEvent.FINISHED))
  assert not statuses(control)["a[0]"].HasField("usage")
  started(control, "a[0]")  # a new process: the old one's stats are void
  assert not statuses(control)["a[0]"].HasField("usage")


class Echo:
  def echo(self, value):
    return value

  def fail(self):
    raise ValueError("no")


def test_reporter_counts_calls_errors_and_table_activity_with_their_rates(control):
  server = Server(Echo(), secret=SECRET, label="a[0]")
  server.start()
  replay = replay_server.Server([Table.queue("q", 10)])
  reporter = Reporter(control)
  try:
    reporter.track_server("a[0]", server)
    reporter.track_tables("a[0]", replay.table_stats)
    client = Client(server.address, secret=SECRET, label="a[0]")
    assert [client.echo(i) for i in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="no"):
      client.fail()
    replay_client = replay.localhost_client(timeout=TIMEOUT)
    for i in range(4):
      replay_client.insert({"x": i}, priorities={"q": 1.0})
    replay_client.sample("q")

    first = reporter.sample()
    assert (first.pid, first.host) == (os.getpid(), socket.gethostname())
    assert first.usage.memory_bytes > 0
    [node] = first.nodes
    assert (node.node, node.calls, node.errors) == ("a[0]", 4, 1)
    assert node.calls_per_second > 0 and node.errors_per_second > 0
    [table] = node.tables
    assert (table.name, table.size, table.max_size) == ("q", 3, 10)
    assert (table.inserts, table.samples) == (4, 1)
    assert table.inserts_per_second > 0 and table.samples_per_second > 0

    [node] = reporter.sample().nodes  # nothing happened since: totals stay, rates drop
    assert (node.calls, node.errors, node.calls_per_second, node.errors_per_second) == (4, 1, 0, 0)
    assert (node.tables[0].inserts, node.tables[0].inserts_per_second) == (4, 0)

    started(control, "a[0]")
    control.report_stats(first)
    assert statuses(control)["a[0]"].stats.tables[0].size == 3

    reporter.forget("a[0]")
    assert not reporter.sample().nodes
    client.close()
    replay_client.close()
  finally:
    server.stop()
    replay.stop()

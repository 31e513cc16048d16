"""Tests of the node output multiplexer (launchpad/launch/output.py), with real sockets."""

from __future__ import annotations

from launchpad.launch.output import OutputMux

TIMEOUT = 60.0  # bounds the wait for the multiplexer's thread; a loaded machine is slow


def test_the_tail_of_an_ended_node_has_its_last_line(tmp_path):
  # What a failed node's report carries. The node's last line may still be
  # in the socket when its process has exited: the tail waits for the end.
  output = OutputMux(tmp_path, terminal=None)
  for run in range(20):  # each run races the multiplexer's thread anew
    name = f"node[{run}]"
    node_end = output.attach(name, run)
    node_end.sendall(b"first\n" + f"last line {run}\n".encode())
    node_end.close()
    assert output.tail(name, TIMEOUT) == f"last lines of its output:\nfirst\nlast line {run}"
  assert output.wait_drained(TIMEOUT)


def test_the_tail_of_a_node_that_wrote_nothing_is_empty(tmp_path):
  output = OutputMux(tmp_path, terminal=None)
  output.attach("quiet[0]", 0).close()
  assert output.tail("quiet[0]", TIMEOUT) == ""

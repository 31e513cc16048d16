"""Nodes and programs of the control-plane security tests.

They live in a module of their own so that node processes, which import them
by reference, do not import pytest or the tests. Lines a node prints are
written with one call each, so they stay whole.
"""

from __future__ import annotations

import pathlib
import sys
import time
import types

import launchpad as lp
from launchpad import context, errors

# Bound on every wait inside a node: a test never hangs on a node.
NODE_TIMEOUT = 60.0


def say(text: str) -> None:
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


class NodeError(Exception):
  """An exception type of this module, which the launching test imports too."""


def idle() -> None:
  """Runs until the program stops."""
  lp.wait_for_stop(NODE_TIMEOUT)


def raise_value_error() -> None:
  error = ValueError("bad value 99")
  error.add_note("a note from the node")
  raise error


def raise_launchpad_error() -> None:
  raise errors.CallTimeoutError("the replay table took too long (from the node)")


def raise_node_error() -> None:
  raise NodeError("a NodeError 7")


class Unprintable(Exception):
  def __str__(self) -> str:
    raise RuntimeError("this exception cannot be printed")


def raise_unprintable() -> None:
  raise Unprintable()


def raise_error_of_a_module_only_the_node_has() -> None:
  """Raises an exception whose module exists in this process only."""
  module = types.ModuleType("lp_node_only_module")
  kind = type("NodeOnlyError", (Exception,), {"__module__": module.__name__})
  module.NodeOnlyError = kind
  sys.modules[module.__name__] = module
  raise kind("only the node knows this type")


def failing_program(function) -> lp.Program:
  program = lp.Program("failing")
  program.add_node(lp.PyNode(function), label="failer")
  return program


def idle_program() -> lp.Program:
  program = lp.Program("idle")
  program.add_node(lp.PyNode(idle), label="idle")
  return program


class Pong:
  def ping(self) -> str:
    return "pong"


def call_until_told(server, work: str) -> None:
  """Until the file `work`/finish exists: asks the coordinator where the server
  is and how the program is doing, and calls the server. Then stops the program."""
  control = context.current_runtime().control
  finish = pathlib.Path(work, "finish")
  deadline = time.monotonic() + NODE_TIMEOUT
  calls = 0
  while not finish.exists() and time.monotonic() < deadline:
    assert control.resolve("server[0]", NODE_TIMEOUT).addresses
    assert not control.status().stopping
    assert server.ping() == "pong"
    calls += 1
    if calls == 1:
      say("CALLING")
  if not finish.exists():
    raise TimeoutError(f"nobody created {finish} within {NODE_TIMEOUT} s")
  say(f"CALLED {calls}")
  lp.stop()


def calling_program(work: str) -> lp.Program:
  """A server, and a node that calls it and the coordinator until told to stop."""
  program = lp.Program("calling")
  server = program.add_node(lp.CourierNode(Pong), label="server")
  program.add_node(lp.PyNode(call_until_told, server, work), label="caller")
  return program

"""MultiThreadingColocation: several nodes run as threads of one worker."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from launchpad import errors
from launchpad.nodes.base import Node

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime


class _Colocation(Node):
  """Nodes that launchers place together."""

  def __init__(self, nodes: Sequence[Node]):
    super().__init__()
    nodes = list(nodes)
    if not nodes:
      raise errors.ProgramError(f"{type(self).__name__} needs at least one node.")
    for node in nodes:
      if not isinstance(node, Node):
        raise TypeError(f"{type(self).__name__} takes nodes, got {node!r}.")
    self.nodes = nodes

  @property
  def default_label(self) -> str:
    return "colocation"

  def bind(self, program, label, index, name=None) -> None:
    super().bind(program, label, index, name)
    for k, node in enumerate(self.nodes):
      node.bind(program, label, index, f"{self.name}.{k}")

  def arguments(self) -> Any:
    return [node.arguments() for node in self.nodes]


class MultiProcessingColocation(_Colocation):
  """Nodes placed together, each in a process of its own (a thread under the
  threads launcher). The inner nodes are named `label[index].k`."""

  def inner_nodes(self) -> list[Node]:
    return [n for node in self.nodes for n in node.inner_nodes()]

  def workers(self) -> list[Node]:
    return [w for node in self.nodes for w in node.workers()]


class MultiThreadingColocation(_Colocation):
  """Runs `nodes` in threads of one worker: one process, shared memory.

  Take handles of the inner nodes with `node.create_handle()` (or add them
  with `add_node`, which returns one) before adding the colocation to the
  program; the inner nodes are named `label[index].k`. Each inner node
  reports its own end, and a failure of one stops the program.

  Args:
    nodes: the nodes to run together.
    return_on_first_completed: the colocation itself counts as ended (in
      `lp status`, and for Launchpad code that waits on it) as soon as its
      first node ends; the others still run to their own end, and the
      worker lasts until they do.
  """

  def __init__(self, nodes: Sequence[Node], return_on_first_completed: bool = False):
    super().__init__(nodes)
    if not isinstance(return_on_first_completed, bool):
      raise TypeError(
        "lp.MultiThreadingColocation: return_on_first_completed must be True or False, got "
        f"{return_on_first_completed!r}."
      )
    self.return_on_first_completed = return_on_first_completed

  def add_node(self, node: Node) -> Any:
    """Adds `node` to the colocation and returns its handle (before the
    colocation is added to a program)."""
    if self.program is not None:
      raise errors.ProgramError(
        f"colocation {self.name} is already in program {self.program.name!r}; add its nodes "
        "before adding it to the program."
      )
    if not isinstance(node, Node):
      raise TypeError(f"{type(self).__name__}.add_node takes a node, got {node!r}.")
    self.nodes.append(node)
    return node.create_handle()

  def inner_nodes(self) -> list[Node]:
    return [n for node in self.nodes for n in (node, *node.inner_nodes())]

  def run(self, runtime: ProgramRuntime) -> None:
    from launchpad.launch import worker  # the worker runs nodes; nodes do not import it at load

    first_ended = threading.Event()

    def run_inner(node: Node) -> None:
      try:
        worker.run_node(node, runtime)
      finally:
        first_ended.set()

    threads = [
      threading.Thread(target=run_inner, args=(node,), name=node.name, daemon=True)
      for node in self.nodes
    ]
    for thread in threads:
      thread.start()
    if self.return_on_first_completed:
      first_ended.wait()
      worker.report_finished(self.name, runtime)
    for thread in threads:
      thread.join()

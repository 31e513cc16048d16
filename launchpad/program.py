"""Program: the graph of nodes that a launcher turns into running workers.

Building a program does no I/O: nodes are plain objects, and handles are
promises that become clients only inside the node that receives them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from launchpad import errors, handles
from launchpad.nodes.base import Node
from launchpad.restarts import RestartPolicy

_LABEL = re.compile(r"^[\w.\-]+$")


class Program:
  """A named set of nodes, grouped by label."""

  def __init__(self, name: str):
    _check_label(name, "program name")
    self.name = name
    self._groups: dict[str, list[Node]] = {}
    self._current_group: str | None = None

  @property
  def groups(self) -> dict[str, list[Node]]:
    """Label -> the nodes added under it, in order."""
    return {label: list(nodes) for label, nodes in self._groups.items()}

  def add_node(
    self,
    node: Node,
    label: str | None = None,
    *,
    restart: str = "never",
    max_restarts: int = 3,
    restart_backoff: float = 1.0,
  ) -> handles.Handle:
    """Adds `node` and returns its handle.

    Args:
      node: the node to add.
      label: the node's group; defaults to the enclosing `group()` (inside
        one, only its own label may be given), else to the name of the
        node's function or class.
      restart: 'never' (a failure stops the program) or 'on-failure' (the
        node is started again, keeping its address).
      max_restarts: with 'on-failure', restarts before a failure stops the program.
      restart_backoff: seconds before the first restart; doubles each time.
    """
    if not isinstance(node, Node):
      raise TypeError(f"program {self.name}: add_node takes a node (lp.PyNode, ...), got {node!r}.")
    if label is not None and self._current_group not in (None, label):
      raise errors.ProgramError(
        f"program {self.name}: add_node(label={label!r}) inside group "
        f"{self._current_group!r}; give the group's label, drop the label, or add the node "
        "outside the group."
      )
    label = label if label is not None else self._current_group or _default_label(node)
    _check_label(label, "node label")
    policy = RestartPolicy(restart, max_restarts, restart_backoff)
    node.bind(self, label, len(self._groups.get(label, ())))
    self._groups.setdefault(label, []).append(node)
    for worker in node.workers():
      worker.restart_policy = policy
    return node.create_handle()

  @contextlib.contextmanager
  def group(self, label: str) -> Iterator[None]:
    """Nodes added inside this block get `label`."""
    if self._current_group is not None:
      raise errors.ProgramError(
        f"program {self.name}: group {label!r} opened inside group "
        f"{self._current_group!r}; groups cannot be nested."
      )
    _check_label(label, "group label")
    self._current_group = label
    try:
      yield
    finally:
      self._current_group = None

  @property
  def current_group(self) -> str:
    """The label of the enclosing `group()` block."""
    if self._current_group is None:
      raise errors.ProgramError(
        f"program {self.name}: current_group is only set inside a `with program.group(label):` "
        "block."
      )
    return self._current_group

  def get_all_nodes(self) -> list[Node]:
    """Every node added, in the order of their groups."""
    return [node for nodes in self._groups.values() for node in nodes]

  def __repr__(self) -> str:
    sizes = ", ".join(f"{label}: {len(nodes)}" for label, nodes in self._groups.items())
    return f"Program({self.name!r}, {{{sizes}}})"


def make_program(*nodes: Node, name: str = "launchpad") -> Program:
  """A program of `nodes`, each labelled after its function or class."""
  program = Program(name)
  for node in nodes:
    program.add_node(node)
  return program


def _default_label(node: Node) -> str:
  """The node's function or class name, made a valid label ('<lambda>' -> 'lambda')."""
  name = getattr(node, "default_label", type(node).__name__.lower())
  return re.sub(r"[^\w.\-]+", "_", name).strip("_") or "node"


def _check_label(label: object, what: str) -> None:
  if not isinstance(label, str) or not _LABEL.match(label):
    raise errors.ProgramError(
      f"bad {what} {label!r}: use a non-empty string of letters, digits, '_', '.' or '-'."
    )

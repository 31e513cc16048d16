"""The base of every node type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launchpad import errors, handles
from launchpad.restarts import RestartPolicy

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime
  from launchpad.program import Program


class Node:
  """A unit of a program that runs in a worker (a thread, a process, an actor).

  Subclasses say what running means (`run`) and what their handle gives
  (`create_handle`). The program sets `label` and `index` when it adds them.
  """

  def __init__(self) -> None:
    self.label: str | None = None
    self.index: int | None = None
    self.program: Program | None = None
    self.restart_policy = RestartPolicy()
    self._name: str | None = None

  @property
  def name(self) -> str | None:
    """`label[index]`, the node's name in logs, errors and the control plane."""
    if self._name is None and self.label is not None:
      self._name = f"{self.label}[{self.index}]"
    return self._name

  def __getstate__(self) -> dict:
    """A node travels without its program, which holds every other node: a
    program of N nodes would send N times its own size. Its worker needs only
    the node and the handles in its arguments."""
    return {**self.__dict__, "program": None}

  def bind(self, program: Program, label: str, index: int, name: str | None = None) -> None:
    """Called by the program when the node is added."""
    if self.program is not None:
      raise errors.ProgramError(
        f"node {self.name} is already in program {self.program.name!r}; create a new node "
        "object for each place it runs."
      )
    self.program, self.label, self.index, self._name = program, label, index, name

  def create_handle(self) -> handles.Handle:
    """A handle to this node; the program returns one from `add_node`."""
    return _NoServiceHandle(self)

  def inner_nodes(self) -> list[Node]:
    """Nodes run inside this one (colocation); empty for plain nodes."""
    return []

  def workers(self) -> list[Node]:
    """The nodes that launchers run as separate workers for this one: itself,
    except for colocations whose nodes each get a process."""
    return [self]

  def arguments(self) -> Any:
    """Everything this node carries to its worker, for validation and pickling."""
    return ()

  def run(self, runtime: ProgramRuntime) -> None:
    """Runs the node in the calling thread until it is done or the program stops."""
    raise NotImplementedError


class _NoServiceHandle(handles.Handle):
  """The handle of a node that serves nothing."""

  def connect(self, runtime: ProgramRuntime) -> Any:
    raise errors.ProgramError(
      f"node {self.node_name} is a {type(self._node).__name__ if self._node else 'node'} and "
      "serves no methods; make it a lp.CourierNode to call it."
    )

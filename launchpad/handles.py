"""Handles, Deferred values, and replacing them inside node arguments.

A handle is a promise of a client: passing node A's handle to node B's
constructor is an edge of the program graph. It becomes a client only inside
B, at run time, on whatever host B landed on (`dereference`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from launchpad import context, errors

if TYPE_CHECKING:
  from launchpad.nodes.base import Node


class Handle:
  """Refers to a node's service; `dereference()` gives a client of it."""

  def __init__(self, node: Node):
    self._node: Node | None = node
    self._name: str | None = None

  @property
  def node(self) -> Node | None:
    """The node this handle refers to (None in a process that received it)."""
    return self._node

  @property
  def node_name(self) -> str:
    """The node's name, `label[index]`, once it is in a program."""
    if self._name is None:
      if self._node is None or self._node.name is None:
        raise errors.ProgramError(
          f"this handle refers to a {type(self._node).__name__} that was never "
          "added to a program; add it with program.add_node(...)."
        )
      self._name = self._node.name
    return self._name

  def dereference(self) -> Any:
    """The client of the node; call this inside a running program."""
    program = self._node.program if self._node is not None else None
    return self.connect(context.current_runtime(program))

  def connect(self, runtime: context.ProgramRuntime) -> Any:
    """The client of the node within `runtime`'s program."""
    raise NotImplementedError

  def __getattr__(self, name: str) -> Any:
    # Only reached for attributes the handle does not have: most often a
    # method of the node's service, called on the handle instead of a client.
    if name.startswith("_"):
      raise AttributeError(name)
    node = self.__dict__.get("_name") or getattr(self.__dict__.get("_node"), "name", None)
    raise AttributeError(
      f"{type(self).__name__} of node {node or '(not added yet)'} has no attribute {name!r}: "
      "a handle is not a client. Handles are dereferenced inside a node at run time: pass the "
      "handle to the node that calls it (lp.CourierNode(Actor, handle)) and call "
      f"`{name}` on the client that node receives, or call handle.dereference() inside a "
      "running node or after lp.launch(program)."
    )

  def __reduce__(self):
    # Travels as the node's name: the program graph stays behind.
    return _rebuild_handle, (type(self), dict(self.__dict__, _node=None, _name=self.node_name))

  def __repr__(self) -> str:
    name = self._name or (self._node.name if self._node is not None else None)
    return f"<{type(self).__name__} of {name or 'an unadded node'}>"


def _rebuild_handle(cls: type[Handle], state: dict[str, Any]) -> Handle:
  handle = object.__new__(cls)
  handle.__dict__.update(state)
  return handle


class Deferred:
  """`fn(*args, **kwargs)` called inside the node that receives it.

  Use it for values that cannot travel or must be made where they are used
  (an environment, a device); handles inside its arguments are dereferenced.
  """

  def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
    self.fn = fn
    self.args = args
    self.kwargs = kwargs

  def __repr__(self) -> str:
    return f"Deferred({getattr(self.fn, '__qualname__', self.fn)!r})"


def dereference(value: Any, runtime: context.ProgramRuntime) -> Any:
  """A copy of `value` with handles replaced by clients and Deferred built."""
  if isinstance(value, Handle):
    return value.connect(runtime)
  if isinstance(value, Deferred):
    args = dereference(value.args, runtime)
    kwargs = dereference(value.kwargs, runtime)
    return value.fn(*args, **kwargs)
  return _map_children(value, lambda child: dereference(child, runtime))


def find_handles(value: Any, path: str = "") -> Iterator[tuple[str, Handle]]:
  """Every handle inside `value`, with its path (`args[0].replay`)."""
  if isinstance(value, Handle):
    yield path, value
    return
  if isinstance(value, Deferred):
    yield from find_handles(value.args, f"{path}<Deferred>.args")
    yield from find_handles(value.kwargs, f"{path}<Deferred>.kwargs")
    return
  for child_path, child in children(value, path):
    yield from find_handles(child, child_path)


def children(value: Any, path: str) -> Iterator[tuple[str, Any]]:
  """The parts of a container that may hold handles, with their paths."""
  if isinstance(value, dict):
    for key, item in value.items():
      yield f"{path}[{key!r}]", item
  elif isinstance(value, list | tuple | set | frozenset):
    for i, item in enumerate(value):
      yield f"{path}[{i}]", item
  elif dataclasses.is_dataclass(value) and not isinstance(value, type):
    for field in dataclasses.fields(value):
      yield f"{path}.{field.name}", getattr(value, field.name)


def _map_children(value: Any, fn: Callable[[Any], Any]) -> Any:
  if isinstance(value, dict):
    result = copy.copy(value)  # keeps a dict subclass's own state (defaultdict's factory)
    for key, item in value.items():
      result[key] = fn(item)
    return result
  if isinstance(value, tuple) and hasattr(value, "_fields"):
    return type(value)(*(fn(v) for v in value))
  if isinstance(value, list | tuple | set | frozenset):
    return type(value)(fn(v) for v in value) if value else value
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    result = copy.copy(value)
    for field in dataclasses.fields(value):
      object.__setattr__(result, field.name, fn(getattr(value, field.name)))
    return result
  return value

"""PyNode and PyClassNode: run a Python function or object as a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launchpad import handles
from launchpad.nodes.base import Node

if TYPE_CHECKING:
  from launchpad.address import Address
  from launchpad.context import ProgramRuntime


class PyNode(Node):
  """Runs `fn(*args, **kwargs)`; handles in the arguments become clients.

  `fn` is positional-only, so that every keyword reaches it (Launchpad's
  `function=` keyword is therefore not accepted: pass the function first).
  """

  def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any):
    super().__init__()
    if not callable(fn):
      raise TypeError(f"{type(self).__name__} needs a callable, got {fn!r}.")
    self.fn = fn
    self.args = args
    self.kwargs = kwargs
    # lp.Address objects this node serves on (Launchpad's addressing).
    self.addresses: list[Address] = []

  def configure(self, *args: Any, **kwargs: Any) -> None:
    """Sets the arguments after creation: how two nodes get each other's handles."""
    self.args = args
    self.kwargs = kwargs

  def allocate_address(self, address: Address) -> None:
    """Makes this node the owner of `address` (same as `address.assign(node)`)."""
    address.assign(self)

  @property
  def default_label(self) -> str:
    return getattr(self.fn, "__name__", type(self).__name__).lower()

  def arguments(self) -> Any:
    return {"fn": self.fn, "args": self.args, "kwargs": self.kwargs}

  def build(self, runtime: ProgramRuntime) -> Any:
    """Calls `fn` with the arguments dereferenced."""
    args = handles.dereference(self.args, runtime)
    kwargs = handles.dereference(self.kwargs, runtime)
    return self.fn(*args, **kwargs)

  def run(self, runtime: ProgramRuntime) -> None:
    self.build(runtime)


class PyClassNode(PyNode):
  """Constructs `cls(*args, **kwargs)` and calls its `run()` if it has one."""

  def __init__(self, cls: Callable[..., Any], /, *args: Any, **kwargs: Any):
    super().__init__(cls, *args, **kwargs)
    self.run_enabled = True

  def disable_run(self) -> None:
    """Constructs the object but does not call its `run()`."""
    self.run_enabled = False

  def enable_run(self) -> None:
    """Undoes `disable_run()`: the object's `run()` is called (the default)."""
    self.run_enabled = True

  def run(self, runtime: ProgramRuntime) -> None:
    instance = self.build(runtime)
    if self.run_enabled and callable(getattr(instance, "run", None)):
      instance.run()

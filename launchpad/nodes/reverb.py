"""ReverbNode: Launchpad's replay node, for Acme and other Reverb users.

    replay = program.add_node(lp.ReverbNode(make_tables), label="replay")

`make_tables()` runs inside the node and returns its tables. What the node
serves follows from what they are:

- this project's `launchpad.replay.Table`s: the node is a ReplayNode, and its
  handle dereferences to a `launchpad.replay.Client`;
- DeepMind Reverb's `reverb.Table`s (dm-reverb installed, the `[reverb]`
  extra): the node runs a real `reverb.Server`, and its handle dereferences
  to a real `reverb.Client`, as Launchpad's does.

The node registers its address with the coordinator (a Reverb server's as
`reverb://host:port`), so the handle learns which of the two it is when it
is dereferenced, wherever that happens.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from launchpad import errors
from launchpad.nodes.base import Node
from launchpad.nodes.replay import ReplayHandle, ReplayNode
from launchpad.replay.table import Table

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime

# How a Reverb server's address is registered with the coordinator.
REVERB_SCHEME = "reverb://"


class ReverbNode(Node):
  """Serves the tables `priority_tables_fn()` returns (Launchpad's ReverbNode).

  Args:
    priority_tables_fn: a function of no arguments returning the tables,
      called inside the node: `launchpad.replay.Table`s or `reverb.Table`s.
    checkpoint_ctor: a function of no arguments, called inside the node:
      with Reverb tables it returns the server's checkpointer (None: Reverb's
      default); with this project's tables, the directory the checkpoints go
      to (ReplayNode's `checkpoint_dir`, restored from on start).
    checkpoint_time_delta_minutes: minutes between checkpoints written while
      the node runs (with this project's tables and no `checkpoint_ctor`,
      into a new temporary directory, as Reverb's default checkpointer does).
  """

  def __init__(
    self,
    priority_tables_fn: Callable[[], Sequence[Any]],
    checkpoint_ctor: Callable[[], Any] | None = None,
    checkpoint_time_delta_minutes: float | None = None,
  ):
    super().__init__()
    if not callable(priority_tables_fn):
      raise TypeError(
        "lp.ReverbNode(priority_tables_fn): give a function of no arguments that returns the "
        f"tables (it runs inside the node), got {priority_tables_fn!r}."
      )
    if checkpoint_ctor is not None and not callable(checkpoint_ctor):
      raise TypeError(
        f"lp.ReverbNode: checkpoint_ctor must be a function of no arguments, got "
        f"{checkpoint_ctor!r}."
      )
    minutes = checkpoint_time_delta_minutes
    if minutes is not None and (
      isinstance(minutes, bool)
      or not isinstance(minutes, int | float)
      or not math.isfinite(minutes)
      or minutes <= 0
    ):
      raise ValueError(
        f"lp.ReverbNode: checkpoint_time_delta_minutes must be a number of minutes > 0 when "
        f"given, got {minutes!r}."
      )
    self.priority_tables_fn = priority_tables_fn
    self.checkpoint_ctor = checkpoint_ctor
    self.checkpoint_time_delta_minutes = minutes

  @property
  def default_label(self) -> str:
    return "replay"

  def arguments(self) -> Any:
    return {"priority_tables_fn": self.priority_tables_fn, "checkpoint_ctor": self.checkpoint_ctor}

  def create_handle(self) -> ReverbHandle:
    return ReverbHandle(self)

  def run(self, runtime: ProgramRuntime) -> None:
    tables = list(self.priority_tables_fn())
    if tables and all(isinstance(t, Table) for t in tables):
      self._serve_replay(runtime, tables)
    elif tables and all(_is_reverb_table(t) for t in tables):
      self._serve_reverb(runtime, tables)
    else:
      kinds = ", ".join(sorted({type(t).__qualname__ for t in tables})) or "no tables"
      raise errors.ProgramError(
        f"ReverbNode {self.name}: priority_tables_fn returned {kinds}; return a list of "
        "launchpad.replay.Table, or of reverb.Table with dm-reverb installed "
        "(pip install 'launchpad-rl[reverb]')."
      )

  def _serve_replay(self, runtime: ProgramRuntime, tables: list[Table]) -> None:
    """Runs a ReplayNode under this node's name."""
    directory = self.checkpoint_ctor() if self.checkpoint_ctor is not None else None
    if directory is not None and not isinstance(directory, str | os.PathLike):
      raise TypeError(
        f"ReverbNode {self.name}: with launchpad.replay tables, checkpoint_ctor must return "
        f"the checkpoint directory, got {directory!r}."
      )
    every = self.checkpoint_time_delta_minutes
    if every is not None and directory is None:
      directory = tempfile.mkdtemp(prefix=f"{self.label}-checkpoints-")
    replay = ReplayNode(
      tables, checkpoint_dir=directory, checkpoint_every=None if every is None else every * 60
    )
    replay.bind(self.program, self.label, self.index, self.name)
    replay.run(runtime)

  def _serve_reverb(self, runtime: ProgramRuntime, tables: list[Any]) -> None:
    """Runs a reverb.Server until the program stops, checkpointing as asked."""
    import reverb

    checkpointer = self.checkpoint_ctor() if self.checkpoint_ctor is not None else None
    server = reverb.Server(tables=tables, checkpointer=checkpointer)
    try:
      runtime.control.register(self.name, [f"{REVERB_SCHEME}{runtime.host}:{server.port}"])
      every = self.checkpoint_time_delta_minutes
      if every is None:
        runtime.stop_event.wait()
      else:
        while not runtime.stop_event.wait(every * 60):
          server.localhost_client().checkpoint()
    finally:
      server.stop()


class ReverbHandle(ReplayHandle):
  """The handle of a ReverbNode: a `reverb.Client` if the node serves Reverb
  tables, else a `launchpad.replay.Client`. Dereferencing it waits for the
  node to serve."""

  def connect(self, runtime: ProgramRuntime) -> Any:
    endpoint = runtime.control.resolve(self.node_name, None)
    served = [a for a in endpoint.addresses if a.startswith(REVERB_SCHEME)]
    if not served:
      return super().connect(runtime)
    import reverb

    return reverb.Client(served[0][len(REVERB_SCHEME) :])


def _is_reverb_table(table: Any) -> bool:
  """Whether `table` is a reverb.Table, without importing dm-reverb for it."""
  return any(
    cls.__module__.startswith("reverb") and cls.__name__ == "Table" for cls in type(table).__mro__
  )

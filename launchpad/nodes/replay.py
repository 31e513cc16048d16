"""ReplayNode: a replay server (launchpad.replay) as a node of a program.

    replay = program.add_node(lp.ReplayNode([replay.Table.queue("q", 1000)]))
    program.add_node(lp.PyNode(actor, replay))   # actor: replay.insert(...)

It is a CourierNode serving `replay.server.ReplayService`, so it gets
everything a CourierNode has (the coordinator registers its address, callers
on the same host use its Unix socket, restarts keep its address); its handle
dereferences to a `replay.Client` instead of a bare courier client. When the
program stops, the tables close first, so callers blocked on a rate limiter
get TableClosedError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from launchpad import context
from launchpad.nodes.courier import CourierHandle, CourierNode
from launchpad.replay.client import Client
from launchpad.replay.server import ReplayService, build_tables
from launchpad.replay.table import Table

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime

TablesSpec = Sequence[Table] | Callable[[], Sequence[Table]]


def _serve(tables: Any) -> ReplayService:
  """Builds the service inside the node's worker (its tables too, given a function)."""
  service = ReplayService(tables() if callable(tables) else tables)
  context.register_stop_handler(service._close)
  return service


class ReplayNode(CourierNode):
  """A node that serves replay tables; its handle gives a `replay.Client`.

  Args:
    tables: a list of Tables, or a zero-argument function returning them,
      called inside the node (for tables that cannot or should not be built
      where the program is defined). Tables given as objects travel to the
      node as snapshots (Table.snapshot()): the node serves copies, on one
      shared ChunkStore, and the objects given are not changed.
    checkpoint_dir, checkpoint_every: reserved for checkpoints, which are not
      implemented yet: setting either raises NotImplementedError.
  """

  def __init__(
    self,
    tables: TablesSpec,
    checkpoint_dir: str | None = None,
    checkpoint_every: float | None = None,
  ):
    if checkpoint_dir is not None or checkpoint_every is not None:
      raise NotImplementedError(
        "ReplayNode checkpoints are not implemented yet: leave checkpoint_dir and "
        "checkpoint_every unset (tables can be saved with Table.snapshot() meanwhile)."
      )
    if not callable(tables):
      tables = list(tables)
      build_tables(tables)  # fail here, not in the worker: no tables, duplicate names, non-tables
      tables = [t.snapshot() for t in tables]
    super().__init__(_serve, tables)

  @property
  def default_label(self) -> str:
    return "replay"

  def create_handle(self) -> ReplayHandle:
    return ReplayHandle(self)


class ReplayHandle(CourierHandle):
  """The handle of a ReplayNode; dereferences to a `replay.Client`."""

  def connect(self, runtime: ProgramRuntime) -> Client:
    return Client(super().connect(runtime))

"""ReplayNode: a replay server (launchpad.replay) as a node of a program.

    replay = program.add_node(lp.ReplayNode([replay.Table.queue("q", 1000)]))
    program.add_node(lp.PyNode(actor, replay))   # actor: replay.insert(...)

It is a CourierNode serving `replay.server.ReplayService`, so it gets
everything a CourierNode has (the coordinator registers its address, callers
on the same host use its Unix socket, restarts keep its address); its handle
dereferences to a `replay.Client` instead of a bare courier client. When the
program stops, the tables close first, so callers blocked on a rate limiter
get TableClosedError.

Checkpoints: with `checkpoint_dir`, the node restores its tables from the
newest complete checkpoint there when it starts (so a node restarted after a
crash, `restart='on-failure'`, comes back with what was checkpointed), and
`client.checkpoint()` writes one. With `checkpoint_every` too, a thread of
the node writes one every that many seconds, and a last one when the
program stops.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from launchpad import context, timeouts
from launchpad.nodes.courier import CourierHandle, CourierNode
from launchpad.replay.checkpoint import PeriodicCheckpointer
from launchpad.replay.client import Client
from launchpad.replay.server import (
  WRITER_LEASE_SECONDS,
  ReplayService,
  build_tables,
)
from launchpad.replay.table import Table

log = logging.getLogger(__name__)

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime

TablesSpec = Sequence[Table] | Callable[[], Sequence[Table]]

# How long a stopping node waits for its last checkpoint to be written.
FINAL_CHECKPOINT_SECONDS = 60.0


def _serve(
  tables: Any,
  checkpoint_dir: str | None = None,
  writer_lease_seconds: float = WRITER_LEASE_SECONDS,
) -> ReplayService:
  """Builds the service inside the node's worker (its tables too, given a function).

  The service closes when the program stops.
  """
  return ReplayService(
    tables() if callable(tables) else tables,
    checkpoint_dir=checkpoint_dir,
    writer_lease_seconds=writer_lease_seconds,
    register_close=context.register_stop_handler,
  )


class ReplayNode(CourierNode):
  """A node that serves replay tables; its handle gives a `replay.Client`.

  Args:
    tables: a list of Tables, or a zero-argument function returning them,
      called inside the node (for tables that cannot or should not be built
      where the program is defined). Tables given as objects travel to the
      node as snapshots (Table.snapshot()): the node serves copies, on one
      shared ChunkStore, and the objects given are not changed.
    checkpoint_dir: where the node's checkpoints go (launchpad.replay.checkpoint);
      on start the tables are restored from the newest complete one there.
      `client.checkpoint()` writes one.
    checkpoint_every: seconds between checkpoints written by a thread of the
      node (which also writes one when the program stops); needs
      checkpoint_dir.
    writer_lease_seconds: how long a trajectory writer's chunks outlive its
      last call, so that the chunks of a writer whose process died are freed.
  """

  def __init__(
    self,
    tables: TablesSpec,
    checkpoint_dir: str | None = None,
    checkpoint_every: float | None = None,
    writer_lease_seconds: float = WRITER_LEASE_SECONDS,
  ):
    writer_lease_seconds = timeouts.positive(writer_lease_seconds, "writer_lease_seconds")
    if checkpoint_dir is not None:
      checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
    if checkpoint_every is not None:
      if checkpoint_dir is None:
        raise ValueError("checkpoint_every needs a checkpoint_dir")
      if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int | float)
        or not math.isfinite(checkpoint_every)
        or checkpoint_every <= 0
      ):
        raise ValueError(
          f"checkpoint_every must be a number of seconds > 0, got {checkpoint_every!r}"
        )
    if not callable(tables):
      tables = list(tables)
      build_tables(tables)  # fail here, not in the worker: no tables, duplicate names, non-tables
      tables = [t.snapshot() for t in tables]
    super().__init__(_serve, tables, checkpoint_dir, writer_lease_seconds)
    self._checkpoint_every = checkpoint_every
    self._periodic: PeriodicCheckpointer | None = None  # in the worker, while it serves

  def build(self, runtime: ProgramRuntime) -> ReplayService:
    service = super().build(runtime)
    runtime.stats.track_tables(self.name, service.table_stats)  # sizes and rates, for lp top
    if self._checkpoint_every is not None:
      self._periodic = PeriodicCheckpointer(service.checkpoint, self._checkpoint_every)
      self._periodic.start()
      context.register_stop_handler(self._periodic.request_stop)  # after the service's close
    return service

  def run(self, runtime: ProgramRuntime) -> None:
    self._periodic = None
    try:
      super().run(runtime)
    finally:
      # The worker exits when run() returns: wait for the last checkpoint.
      periodic, self._periodic = self._periodic, None
      if periodic is not None and not periodic.stop(FINAL_CHECKPOINT_SECONDS):
        log.warning(
          "replay node: the last checkpoint was not written within %g s", FINAL_CHECKPOINT_SECONDS
        )

  @property
  def default_label(self) -> str:
    return "replay"

  def create_handle(self) -> ReplayHandle:
    return ReplayHandle(self)


class ReplayHandle(CourierHandle):
  """The handle of a ReplayNode; dereferences to a `replay.Client`."""

  def connect(self, runtime: ProgramRuntime) -> Client:
    # Streams open connections of their own, as the handle's clients do.
    return Client(
      super().connect(runtime), connect=functools.partial(CourierHandle.connect, self, runtime)
    )

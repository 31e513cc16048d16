"""BroadcastNode: the newest version of a learner's parameters, for every actor.

    params = program.add_node(lp.BroadcastNode(), label="params")
    program.add_node(lp.CourierNode(Learner, params))  # params.publish(weights)
    program.add_node(lp.PyNode(actor, params))         # params.latest() / wait_newer(v)

It is a CourierNode serving `broadcast.service.BroadcastService`, so the
coordinator registers its address and restarts keep it; its handle
dereferences to a `broadcast.client.BroadcastClient`. Readers on its host
share one read-only copy of each version (a memfd); see the
"Parameter broadcast" sections of docs/design.md and docs/courier.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launchpad.broadcast.client import BroadcastClient
from launchpad.broadcast.service import BroadcastService
from launchpad.nodes.courier import CourierHandle, CourierNode

if TYPE_CHECKING:
  from launchpad.context import ProgramRuntime


class BroadcastNode(CourierNode):
  """A node that holds the newest published version of some parameters.

  Its handle dereferences to a BroadcastClient: `publish(params)` on the
  learner's side, `latest(min_version, timeout)` and `wait_newer(version,
  timeout)` on the actors', each returning `(version, params)`.
  """

  def __init__(self) -> None:
    super().__init__(BroadcastService)

  @property
  def default_label(self) -> str:
    return "broadcast"

  def build(self, runtime: ProgramRuntime) -> BroadcastService:
    """The service, which closes (ending every wait) when the program stops."""
    service = BroadcastService(self.name, runtime.secret)
    runtime.register_stop_handler(service.close)
    return service

  def create_handle(self) -> BroadcastHandle:
    return BroadcastHandle(self)


class BroadcastHandle(CourierHandle):
  """The handle of a BroadcastNode; dereferences to a BroadcastClient."""

  def connect(self, runtime: ProgramRuntime) -> BroadcastClient:
    return BroadcastClient(super().connect(runtime), runtime.secret, self.node_name)

"""The Ray launcher's options, apart from the launcher: reading them (for
`lp launch`'s flags, registry.Entry.options) imports no Ray."""

from __future__ import annotations

import dataclasses
from typing import Any

from launchpad.launch import registry
from launchpad.tls import TlsConfig


@dataclasses.dataclass(frozen=True)
class RayOptions:
  """Options of the Ray launcher (`lp.launch` arguments of the same names).

  Attributes:
    local_resources: group label -> lp.RayResources(num_cpus=, num_gpus=,
      resources=, placement_strategy=).
    ray_address: the Ray cluster to join ('auto', 'ray://head:10001',
      'host:6379'). Default: the cluster this process joined already
      (ray.init), else the one $RAY_ADDRESS names, else a new local cluster
      on loopback that ends with the program.
    tls: encrypt traffic between nodes and with the coordinator: True makes a
      certificate for this launch; or give lp.TlsConfig.from_files(...).
  """

  local_resources: dict[str, Any] | None = None
  ray_address: str | None = dataclasses.field(
    default=None, metadata=registry.flag("the cluster to join (default: start a local one)")
  )
  tls: bool | TlsConfig = False

"""Which host and network namespace this process runs in.

Nodes register this identity with their addresses, and callers compare it
with their own to pick a node's abstract Unix socket over TCP. It is its own
module so that nodes and handles can use it without loading the control
plane's RPC stack.
"""

from __future__ import annotations

import os
import socket


def host_id() -> str:
  """Identifies this host and network namespace: equal ids reach each other's
  abstract Unix sockets. Nodes that a remote launcher gave an address of their
  own ($LAUNCHPAD_HOST) count as a host of their own, as they would be on a
  separate machine."""
  try:
    netns = os.stat("/proc/self/ns/net").st_ino
  except OSError:
    netns = 0
  return f"{socket.gethostname()}/{netns}/{os.environ.get('LAUNCHPAD_HOST', '')}"

"""Calls that exercise a replay server's episode counts, for this library's
client and for dm-reverb's alike (both have insert, trajectory_writer, reset
and server_info), and the counts dm-reverb 0.14 reports after each of them.

The server must serve two tables with FIFO sampler and remover and a MinSize(1)
limiter: "t" of max_size 3 and "u" of max_size 100.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# After each call: table -> (current_size, num_episodes, num_deleted_episodes),
# as dm-reverb 0.14 reports them for the same calls.
REVERB_COUNTS = [
  ("two inserts", {"t": (2, 2, 0), "u": (1, 1, 0)}),
  ("two episodes of three items", {"t": (2, 2, 0), "u": (7, 3, 0)}),
  ("an eviction", {"t": (3, 3, 1), "u": (7, 3, 0)}),
  ("a reset", {"t": (0, 0, 0), "u": (7, 3, 0)}),
  ("items spanning two episodes", {"t": (0, 0, 0), "u": (12, 5, 0)}),
  ("a flush is not an end of episode", {"t": (0, 0, 0), "u": (17, 6, 0)}),
]


def counts(client: Any) -> dict[str, tuple[int, int, int]]:
  return {
    name: (info.current_size, info.num_episodes, info.num_deleted_episodes)
    for name, info in sorted(client.server_info().items())
  }


def run(client: Any) -> list[tuple[str, dict[str, tuple[int, int, int]]]]:
  """Makes the calls; returns the counts after each, as REVERB_COUNTS lists them."""
  seen = []
  # Each item Client.insert makes is an episode of its own, in each of its tables.
  client.insert({"x": np.float32(1)}, {"t": 1.0, "u": 1.0})
  client.insert({"x": np.float32(2)}, {"t": 1.0})
  seen.append(("two inserts", counts(client)))
  with client.trajectory_writer(num_keep_alive_refs=2) as writer:
    for _ in range(2):
      for step in range(3):
        writer.append({"x": np.float32(step)})
        writer.create_item("u", 1.0, {"x": writer.history["x"][-1]})
      writer.end_episode()
  seen.append(("two episodes of three items", counts(client)))
  client.insert({"x": np.float32(3)}, {"t": 1.0})
  client.insert({"x": np.float32(4)}, {"t": 1.0})  # the table holds 3: the oldest goes
  seen.append(("an eviction", counts(client)))
  client.reset("t")
  seen.append(("a reset", counts(client)))
  with client.trajectory_writer(num_keep_alive_refs=2) as writer:
    for step in range(3):
      writer.append({"x": np.float32(step)})
      writer.create_item("u", 1.0, {"x": writer.history["x"][-1]})
    writer.end_episode(clear_buffers=False)  # the history keeps the last steps
    for step in range(2):
      writer.append({"x": np.float32(step)})
      writer.create_item("u", 1.0, {"x": writer.history["x"][-2:]})
  seen.append(("items spanning two episodes", counts(client)))
  with client.trajectory_writer(num_keep_alive_refs=2) as writer:
    for step in range(5):
      writer.append({"x": np.float32(step)})
      writer.create_item("u", 1.0, {"x": writer.history["x"][-1]})
      if step == 2:
        writer.flush()
  seen.append(("a flush is not an end of episode", counts(client)))
  return seen

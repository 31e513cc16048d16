"""Experience replay, Reverb's way: tables of prioritised items over shared chunks.

This package holds the in-process core that a replay server builds on:

  selectors      which item to sample or evict (Uniform, Prioritized, Fifo,
                 Lifo, MaxHeap, MinHeap)
  rate_limiters  when inserts and samples may proceed (MinSize,
                 SampleToInsertRatio, Queue, Stack, RateLimiter)
  chunk_store    ChunkStore: reference-counted step data, stored once
  item           Item (a table's record of an item), SampledItem
  table          Table: items, priorities, blocking with timeouts, batches
                 (insert_many), sampling transactions, stats
  signature      the dtype and shape every item of a table must have
  snapshot       a table's whole state as plain values, checked on restore
  table_info     TableInfo: what server_info() reports, under Reverb's names
  checkpoint     every table's snapshot in one file; periodic checkpoints
  structure      nested items flattened to columns, and nested again
  errors         RateLimiterTimeoutError, TableClosedError
  server         Server: tables on one ChunkStore, served over courier;
                 trajectory writers' chunks held under leases
  client         Client: insert, sample, mutate_priorities, reset, server_info
  stream         Stream: batches sampled ahead, calls kept in flight (client.stream)
  writer         TrajectoryWriter: items from slices of a stream of steps

The names follow Reverb (`reverb.Table`, `reverb.selectors`,
`reverb.rate_limiters`) so that Reverb users recognise them.
"""

from launchpad.replay import rate_limiters, selectors
from launchpad.replay.chunk_store import ChunkStore, new_key
from launchpad.replay.client import Client
from launchpad.replay.errors import RateLimiterTimeoutError, ReplayError, TableClosedError
from launchpad.replay.item import SampledItem
from launchpad.replay.server import Server
from launchpad.replay.stream import Stream
from launchpad.replay.table import MAX_SAMPLES_PER_CALL, Table
from launchpad.replay.table_info import TableInfo
from launchpad.replay.writer import TrajectoryColumn, TrajectoryWriter

__all__ = [
  "MAX_SAMPLES_PER_CALL",
  "ChunkStore",
  "Client",
  "RateLimiterTimeoutError",
  "ReplayError",
  "SampledItem",
  "Server",
  "Stream",
  "Table",
  "TableClosedError",
  "TableInfo",
  "TrajectoryColumn",
  "TrajectoryWriter",
  "new_key",
  "rate_limiters",
  "selectors",
]

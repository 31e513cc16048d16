"""Runs of a trajectory writer's items that are each one row of chunks.

A writer that makes an item of every step (`history[column][-1]`, Reverb's
most common pattern) sends items whose references are one index per column,
the same row of each column's chunk: {column: [(chunk, row)]}. The server
inserts a run of such items, consecutive in one call, for one table, on the
same chunks, with one structure and the same episodes, through
Table.insert_rows: checked once and inserted under one lock hold, in the
compact form insert_many uses, rather than one Table.insert each (measured:
docs/design.md, Atari-sized writer inserts). Anything else, and any run
that Table.insert_rows refuses, goes item by item as before, so what is
inserted and every error are the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

# Shorter runs go item by item: the run's checks would cost as much.
MIN_RUN = 2


class RowRun(NamedTuple):
  """The items of a call up to `end`, from the one `find` began at: the
  i-th of them is row rows[i] of `columns`' chunks."""

  end: int
  table: str
  keys: list[int]
  priorities: list[Any]
  rows: list[int]
  columns: dict[str, int]
  structure: Any
  episodes: Any


def find(items: Sequence[Any], start: int) -> RowRun | None:
  """The run of one-row items that begins at items[start], or None if it is
  shorter than MIN_RUN. Only the form is looked at here; Table.insert_rows
  checks the values."""
  first = _one_row(items[start])
  if first is None:
    return None
  table, columns, _ = first
  _, _, _, _, structure, episodes = items[start]
  keys: list[int] = []
  priorities: list[Any] = []
  rows: list[int] = []
  seen: set[Any] = set()
  end = start
  for item in itertools.islice(items, start, None):
    found = first if end == start else _one_row(item)
    if found is None or found[0] != table or found[1] != columns:
      break
    key, _, priority, _, item_structure, item_episodes = item
    if type(key) is not int or key in seen:
      break
    if item_structure != structure or item_episodes != episodes:
      break
    seen.add(key)
    keys.append(key)
    priorities.append(priority)
    rows.append(found[2])
    end += 1
  if end - start < MIN_RUN:
    return None
  return RowRun(end, table, keys, priorities, rows, columns, structure, episodes)


def _one_row(item: Any) -> tuple[str, dict[str, int], int] | None:
  """(table, column -> chunk, row) of an item that is one row of its chunks, else None."""
  if type(item) not in (tuple, list) or len(item) != 6:
    return None
  _, table, _, refs, _, _ = item
  if type(refs) is not dict or not refs or type(table) is not str:
    return None
  columns: dict[str, int] = {}
  row = -1
  for column, entries in refs.items():
    if type(entries) not in (list, tuple) or len(entries) != 1:
      return None
    entry = entries[0]
    if type(entry) not in (list, tuple) or len(entry) != 2:
      return None
    chunk, index = entry
    if type(index) is not int or index < 0 or (row >= 0 and index != row):
      return None
    row = index
    columns[column] = chunk
  return table, columns, row

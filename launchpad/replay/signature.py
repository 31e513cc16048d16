"""Table signatures: the dtype and shape each column of every item of a table must have.

A signature maps column -> (dtype, shape) of the column's resolved array;
None in a shape matches any size (`{"obs": (np.float32, (None, 4))}`: any
number of 4-vectors). `normalize` checks one as a user gives it, `check`
holds an item's columns against it (a table's inserts, the server's batches,
restored snapshots), and `plain` writes it as picklable builtins for info
and snapshots (from which `normalize` reads it back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from launchpad.replay.chunk_store import ColumnSpec

Signature = Mapping[str, tuple[Any, Sequence[int | None]]]
"""column -> (dtype, shape) of the column's resolved array; None in a shape matches any size."""


def normalize(signature: Signature | None) -> dict[str, ColumnSpec] | None:
  """The signature as column -> ColumnSpec, or None; ValueError naming what is wrong."""
  if signature is None:
    return None
  if not isinstance(signature, Mapping) or not signature:
    raise ValueError(
      f"signature must be a non-empty mapping column -> (dtype, shape), got {signature!r}"
    )
  result: dict[str, ColumnSpec] = {}
  for column, spec in signature.items():
    if not isinstance(column, str):
      raise ValueError(f"signature: column names must be strings, got {column!r}")
    try:
      dtype, shape = spec
      dtype = np.dtype(dtype)
      dims = tuple(shape)
    except (TypeError, ValueError):
      raise ValueError(
        f"signature column {column!r}: expected (dtype, shape), got {spec!r}"
      ) from None
    for dim in dims:
      if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
        raise ValueError(
          f"signature column {column!r}: dimensions must be ints >= 0 or None, got {shape!r}"
        )
    result[column] = ColumnSpec(dtype, dims)
  return result


def plain(signature: Mapping[str, ColumnSpec] | None) -> dict[str, tuple[Any, list]] | None:
  """A normalized signature as builtins (dtype strings, shape lists), which `normalize` reads."""
  if signature is None:
    return None
  return {
    column: (spec.dtype.str if spec.dtype.fields is None else spec.dtype.descr, list(spec.shape))
    for column, spec in signature.items()
  }


def check(table: str, signature: Mapping[str, ColumnSpec] | None, specs: Mapping[str, ColumnSpec]):
  """Raises ValueError, naming `table` and the column, unless `specs` match `signature`.

  `specs` are an item's columns (column -> ColumnSpec); a signature of None
  accepts anything.
  """
  if signature is None:
    return
  for column in specs:
    if column not in signature:
      raise ValueError(
        f"table {table!r}: column {column!r} is not in the table's signature "
        f"(columns: {', '.join(map(repr, signature))})"
      )
  for column, expected in signature.items():
    actual = specs.get(column)
    if actual is None:
      raise ValueError(
        f"table {table!r}: the item has no column {column!r}, which the signature "
        f"requires (dtype {expected.dtype}, shape {_format_shape(expected.shape)})"
      )
    if actual.dtype != expected.dtype or not _shape_matches(actual.shape, expected.shape):
      raise ValueError(
        f"table {table!r}: column {column!r} does not match the signature: expected "
        f"dtype {expected.dtype} and shape {_format_shape(expected.shape)}, got dtype "
        f"{actual.dtype} and shape {_format_shape(actual.shape)}"
      )


def _format_shape(shape: Sequence[int | None]) -> str:
  return (
    "("
    + ", ".join("None" if d is None else str(d) for d in shape)
    + ("," if len(shape) == 1 else "")
    + ")"
  )


def _shape_matches(actual: Sequence[int], expected: Sequence[int | None]) -> bool:
  return len(actual) == len(expected) and all(
    e is None or a == e for a, e in zip(actual, expected, strict=True)
  )

"""Item structures: nested data flattened to "/"-path columns, and nested again.

An item, a writer's step or a trajectory may be a nesting of mappings,
lists, tuples and namedtuples whose leaves are arrays (or scalars).
`flatten` gives its columns, named by their path ("obs/pos", "r/0"; a bare
array is the column "data"), and its structure: a small value of tuples,
strings and Nones recording the containers, which `unflatten` turns back
into the same nesting around the columns. Items keep their structure on the
server, so samples come back as they were inserted, as Reverb's do.

A structure is () for a leaf, or (kind, names, children, type_name):

  ("dict", keys, children, "")           any Mapping (it comes back a dict)
  ("list", None, children, "")
  ("tuple", None, children, "")
  ("namedtuple", fields, children, "module:qualname")   paths by field name

It is plain data so that the server can check and compare it without the
user's classes. A namedtuple comes back as its own class when its module is
already imported where the sample arrives (and the class has the same
fields), else as a namedtuple of the same name and fields made on the spot:
sampling never imports anything.
"""

from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

LEAF = ()
"""The structure of one leaf (a bare array is the item's column "data")."""

_KINDS = ("dict", "list", "tuple", "namedtuple")


def flatten(data: Any, leaf: Callable[[Any, str], Any] | None = None) -> tuple[dict[str, Any], Any]:
  """(columns, structure) of nested data.

  `leaf(value, path)`, if given, turns each leaf into its column's value
  instead of `np.asarray` (the trajectory writer uses it for references).

  Raises:
    ValueError: an empty container, a non-string mapping key, two leaves with
      one path, or (without `leaf`) an object array.
  """
  columns: dict[str, Any] = {}

  def visit(value: Any, path: str) -> Any:
    where = path or "the top"
    if isinstance(value, Mapping):
      if not value:
        raise ValueError(f"item data: empty mapping at {where}")
      for key in value:
        if not isinstance(key, str):
          raise ValueError(f"item data: keys must be strings, got {key!r} at {where}")
      keys = tuple(value)
      children = tuple(visit(value[k], _join(path, k)) for k in keys)
      return ("dict", keys, children, "")
    if isinstance(value, list | tuple):
      if not value:
        raise ValueError(f"item data: empty sequence at {where}")
      fields = getattr(type(value), "_fields", None)
      if isinstance(value, tuple) and isinstance(fields, tuple):  # a namedtuple: paths by field
        cls = type(value)
        children = tuple(
          visit(child, _join(path, f)) for f, child in zip(fields, value, strict=True)
        )
        return ("namedtuple", fields, children, f"{cls.__module__}:{cls.__qualname__}")
      children = tuple(visit(child, _join(path, str(i))) for i, child in enumerate(value))
      return ("list" if isinstance(value, list) else "tuple", None, children, "")
    column = path or "data"
    if column in columns:
      raise ValueError(f"item data: two leaves have the path {column!r}")
    columns[column] = _array(value, column) if leaf is None else leaf(value, column)
    return LEAF

  structure = visit(data, "")
  return columns, structure


def flat_dict_structure(keys: tuple[str, ...]) -> tuple:
  """The structure of a flat dict with these keys (one object per key tuple, cached)."""
  return _flat_dict_structure(keys)


@functools.lru_cache(maxsize=1024)
def _flat_dict_structure(keys: tuple[str, ...]) -> tuple:
  return ("dict", keys, (LEAF,) * len(keys), "")


def paths(structure: Any) -> list[str]:
  """The column names of a structure, in order; ValueError if it is malformed.

  Cached: a server sees the same few structures over and over.
  """
  try:
    return list(_cached_paths(structure))
  except TypeError:  # unhashable, so not a structure flatten makes: checked uncached, to raise
    return _paths(structure)


@functools.lru_cache(maxsize=1024)
def _cached_paths(structure: Any) -> tuple[str, ...]:
  return tuple(_paths(structure))


def _paths(structure: Any) -> list[str]:
  found: list[str] = []

  def visit(node: Any, path: str) -> None:
    if isinstance(node, tuple) and not node:  # LEAF
      found.append(path or "data")
      return
    if not isinstance(node, tuple) or len(node) != 4 or node[0] not in _KINDS:
      raise ValueError(f"malformed item structure at {path or 'the top'}: {node!r}")
    kind, names, children, _ = node
    if not isinstance(children, tuple) or not children:
      raise ValueError(f"malformed item structure at {path or 'the top'}: {node!r}")
    if kind in ("list", "tuple"):
      names = tuple(str(i) for i in range(len(children)))
    elif (
      not isinstance(names, tuple)
      or len(names) != len(children)
      or not all(isinstance(n, str) for n in names)
    ):
      raise ValueError(f"malformed item structure at {path or 'the top'}: {node!r}")
    for name, child in zip(names, children, strict=True):
      visit(child, _join(path, name))

  visit(structure, "")
  return found


def check(structure: Any, columns: Mapping[str, Any]) -> None:
  """Raises ValueError unless `structure` is well formed and its paths are exactly `columns`."""
  names = paths(structure)
  if len(names) != len(columns) or set(names) != set(columns):
    raise ValueError(
      f"the item structure's paths ({', '.join(map(repr, names))}) are not the item's "
      f"columns ({', '.join(map(repr, columns))})"
    )


def unflatten(structure: Any, columns: Mapping[str, Any]) -> Any:
  """The nesting `structure` describes, around the values of `columns`.

  A structure of None (an item inserted in process without one) gives the
  columns as a dict.
  """
  if structure is None:
    return dict(columns)
  return _build(structure, "", columns)


def _build(node: Any, path: str, columns: Mapping[str, Any]) -> Any:
  """The value of `node` at `path`. A module function: a nested recursive closure
  would be a reference cycle holding `columns`, kept until the garbage collector runs."""
  if not node:  # LEAF
    return columns[path or "data"]
  kind, names, children, type_name = node
  if kind == "dict":
    return {k: _build(c, _join(path, k), columns) for k, c in zip(names, children, strict=True)}
  if kind == "namedtuple":
    values = [_build(c, _join(path, f), columns) for f, c in zip(names, children, strict=True)]
    return _namedtuple_class(type_name, names)(*values)
  values = [_build(c, _join(path, str(i)), columns) for i, c in enumerate(children)]
  return values if kind == "list" else tuple(values)


def _join(path: str, name: str) -> str:
  return f"{path}/{name}" if path else name


def _array(value: Any, column: str) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype.hasobject:
    raise ValueError(
      f"item data: column {column!r} has dtype object ({value!r}); use numeric, bool or "
      "string arrays"
    )
  return array


@functools.lru_cache(maxsize=256)
def _namedtuple_class(type_name: str, fields: tuple[str, ...]) -> type:
  """The namedtuple class `module:qualname` if imported here with these fields, else a new one."""
  module_name, _, qualname = type_name.partition(":")
  found: Any = sys.modules.get(module_name)
  for part in qualname.split("."):
    found = getattr(found, part, None)
  if (
    isinstance(found, type) and issubclass(found, tuple) and getattr(found, "_fields", 0) == fields
  ):
    return found
  name = qualname.rsplit(".", 1)[-1]
  return collections.namedtuple(name if name.isidentifier() else "Item", fields)
